"""Synthetic preference datasets in the real on-disk format (idx/bin + manifest), for tests and GPU runs.

Pair k: a random prompt (labels -100) shared by both sides, then two different random replies (trained).
"""
from __future__ import annotations

import numpy as np

from ..data.indexed import AlignedWriter
from ..data.packing import pack_best_fit
from .dataset import DPO_FORMAT, FIELDS


def make_pairs(num_pairs: int, seq_len: int, vocab: int, seed: int = 0) -> list[tuple]:
    """[(chosen_ids, chosen_labels, rejected_ids, rejected_labels)], every sequence <= seq_len tokens."""
    rng = np.random.RandomState(seed)
    pairs = []
    for _ in range(num_pairs):
        prompt = rng.randint(1, vocab, size=rng.randint(2, seq_len // 2))
        sides = []
        for _side in range(2):
            reply = rng.randint(1, vocab, size=rng.randint(2, seq_len - len(prompt) + 1))
            ids = np.concatenate([prompt, reply]).astype(np.int32)
            labels = ids.copy()
            labels[:len(prompt)] = -100
            sides += [ids, labels]
        pairs.append(tuple(sides))
    return pairs


def write_pairs(prefix: str, pairs: list[tuple], seq_len: int, packed: bool, vocab: int) -> dict:
    """Write pairs like ``dpo.preprocess`` does (packed: best fit into rows of 2 x seq_len)."""
    rows = pack_best_fit([(len(p[0]) + len(p[2]), p) for p in pairs], 2 * seq_len) if packed else [[p] for p in pairs]
    trained = 0
    with AlignedWriter(prefix, FIELDS) as w:
        for row in rows:
            docs = [d for p in row for d in (p[0], p[2])]
            labs = [lab for p in row for lab in (p[1], p[3])]
            trained += sum(int((lab != -100).sum()) for lab in labs)
            w.add_row({"input_ids": np.concatenate(docs), "labels": np.concatenate(labs)}, [len(d) for d in docs])
        manifest = {
            "format": DPO_FORMAT,
            "tokenizer": {"name_or_path": "synthetic", "class": "none", "vocab_size": vocab, "extra_vocab_size": 0,
                          "eos_id": 0, "pad_id": 0},
            "template": "none", "seq_len": seq_len, "packing": packed, "row_capacity": 2 * seq_len,
            "num_rows": w.num_rows, "num_pairs": len(pairs), "num_tokens": w.num_tokens,
            "num_trained_tokens": trained, "skipped": {}, "skipped_examples": {}, "input_sha256": None,
            "created_by": "megatron_autoalign.dpo.synthetic", "reference": None,
        }
        w.commit(manifest)
    return manifest


def pairs_in_file_order(prefix: str) -> list[tuple]:
    """Read back (chosen_ids, chosen_labels, rejected_ids, rejected_labels) in global pair-index order."""
    from .dataset import PreferenceDataset

    ds = PreferenceDataset(prefix)
    out = []
    for i in range(len(ds)):
        r = ds[i]
        cut = np.cumsum(r["doc_lens"])[:-1]
        ids, labs = np.split(r["input_ids"], cut), np.split(r["labels"], cut)
        out += [(ids[k], labs[k], ids[k + 1], labs[k + 1]) for k in range(0, len(ids), 2)]
    return out
