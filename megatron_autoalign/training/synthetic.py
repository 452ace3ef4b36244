"""Synthetic SFT datasets in the real on-disk format (idx/bin + manifest), for tests and GPU smoke runs.

Each conversation is random tokens; its first ~third is "prompt" (labels -100), the rest is trained.
"""

from __future__ import annotations

import numpy as np


def write_synthetic_sft(prefix: str, num_rows: int, seq_len: int, packed: bool = True, vocab: int = 1000,
                        max_docs: int = 3, min_doc: int = 4, seed: int = 0, fill: float = 0.9) -> dict:
    """Write ``num_rows`` rows; packed rows hold 1..max_docs conversations (sum <= seq_len)."""
    from megatron_autoalign.data.indexed import AlignedWriter
    from megatron_autoalign.data.manifest import SFT_FORMAT

    rng = np.random.RandomState(seed)
    trained = convs = 0
    with AlignedWriter(prefix, ("input_ids", "labels")) as w:
        for _ in range(num_rows):
            total = int(rng.randint(seq_len // 2, int(seq_len * fill) + 1))
            n_docs = int(rng.randint(1, max_docs + 1)) if packed else 1
            n_docs = max(1, min(n_docs, total // min_doc))
            cuts = np.sort(rng.choice(np.arange(1, total // min_doc), n_docs - 1, replace=False)) * min_doc if n_docs > 1 else []
            lens = np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()
            ids, labels = [], []
            for n in lens:
                t = rng.randint(1, vocab, size=n)
                lab = t.copy()
                lab[: max(1, n // 3)] = -100
                ids.append(t)
                labels.append(lab)
                trained += int((lab != -100).sum())
            convs += len(lens)
            w.add_row({"input_ids": np.concatenate(ids), "labels": np.concatenate(labels)}, lens)
        manifest = {
            "format": SFT_FORMAT,
            "tokenizer": {"name_or_path": "synthetic", "class": "none", "vocab_size": vocab, "extra_vocab_size": 0,
                          "eos_id": 0, "pad_id": 0},
            "template": "none", "seq_len": seq_len, "packing": packed, "num_rows": w.num_rows,
            "num_conversations": convs, "num_tokens": w.num_tokens, "num_trained_tokens": trained,
        }
        w.commit(manifest)
    return manifest
