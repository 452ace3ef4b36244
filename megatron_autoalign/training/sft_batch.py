"""SFT rows -> one micro-batch of tensors for this rank (pure functions, CPU, numpy/torch).

Rows come from ``SFTDataset``: ``input_ids``, ``labels`` (aligned with input_ids, -100 = not trained)
and ``doc_lens`` (conversation lengths inside the packed row). Two layouts:

- ``thd`` (packed data): the micro-batch's rows are flattened into ONE sequence of documents with
  global ``cu_seqlens``; each document is padded to a multiple of 2*CP (megatron's CP layout needs it)
  and the rest of each row becomes its own masked padding document, so every micro-batch has the same
  length ``micro_batch_size * row_capacity`` (pipeline stages exchange fixed shapes).
- ``sbhd`` (one conversation per row): ``[b, s]`` rows padded at the end; plain causal attention is
  enough because padding comes after every real token.

Targets are shifted WITHIN documents: the target of position i is labels[i+1] when i+1 is in the same
document, else ignored — a document's last token never predicts the next document's first.
Context parallel: every row/document is cut into 2*CP chunks and this CP rank keeps chunks r and
2*CP-1-r (``models.attention.cp_token_layout`` is the single definition of that layout).
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_autoalign.data.encoder import IGNORE_INDEX
from megatron_autoalign.models.attention import PackedDocuments, cp_token_layout



def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def shift_within_docs(labels: np.ndarray, doc_lens: np.ndarray) -> np.ndarray:
    """targets[i] = labels[i+1] inside a document, IGNORE_INDEX at each document's last token."""
    targets = np.full_like(labels, IGNORE_INDEX)
    targets[:-1] = labels[1:]
    targets[np.cumsum(doc_lens) - 1] = IGNORE_INDEX
    return targets


def row_capacity(seq_len: int, cp: int, tp_sp: int, max_docs_per_row: int = 1, packed: bool = True) -> int:
    """Fixed padded length of one row: room for per-document CP padding, divisible by 2*CP*TP(SP)."""
    extra = (2 * cp - 1) * max_docs_per_row if (packed and cp > 1) else 0
    return round_up(seq_len + extra, 2 * cp * tp_sp)


def collate_thd(rows: list[dict], capacity: int, cp_size: int, cp_rank: int, pad_id: int) -> dict:
    """Packed rows -> flattened thd micro-batch for this CP rank (see module docstring)."""
    unit = 2 * cp_size if cp_size > 1 else 1
    tokens, targets, padded_lens, real_lens = [], [], [], []
    for r, row in enumerate(rows):
        ids, doc_lens = row["input_ids"], np.asarray(row["doc_lens"], dtype=np.int64)
        tgt = shift_within_docs(row["labels"], doc_lens)
        padded = -(-doc_lens // unit) * unit
        fill = capacity - int(padded.sum())
        if fill < 0:
            raise ValueError(f"row of {len(ids)} tokens / {len(doc_lens)} documents does not fit the row capacity {capacity}")
        # Scatter each document to its padded offset; the gaps and the tail stay padding/ignored.
        starts = np.concatenate([[0], np.cumsum(padded)[:-1]])
        dest = np.repeat(starts - np.concatenate([[0], np.cumsum(doc_lens)[:-1]]), doc_lens) + np.arange(len(ids))
        row_tok = np.full(capacity, pad_id, dtype=np.int64)
        row_tgt = np.full(capacity, IGNORE_INDEX, dtype=np.int64)
        row_tok[dest], row_tgt[dest] = ids, tgt
        tokens.append(row_tok)
        targets.append(row_tgt)
        padded_lens.extend(padded.tolist())
        real_lens.extend(doc_lens.tolist())
        if fill:  # the row's padding is a document of its own: attends only to itself, never trained
            padded_lens.append(fill)
            real_lens.append(fill)
    tokens, targets = np.concatenate(tokens), np.concatenate(targets)
    work = _work(rows, targets)
    cu_padded = torch.tensor(np.concatenate([[0], np.cumsum(padded_lens)]), dtype=torch.int32)
    cu_real = torch.tensor(np.concatenate([[0], np.cumsum(real_lens)]), dtype=torch.int32)
    lens = np.asarray(padded_lens)
    position_ids = np.arange(len(tokens)) - np.repeat(cu_padded[:-1].numpy(), lens)
    if cp_size > 1:
        _, _, index = cp_token_layout(cu_padded, cp_size, cp_rank)
        index = index.numpy()
        tokens, targets, position_ids = tokens[index], targets[index], position_ids[index]
    return {
        "tokens": torch.from_numpy(tokens).unsqueeze(0),
        "labels": torch.from_numpy(targets).unsqueeze(0),
        "position_ids": torch.from_numpy(position_ids).unsqueeze(0),
        "cu_seqlens": cu_real,
        "cu_seqlens_padded": cu_padded,
        "document_bounds": tuple(cu_padded.tolist()),  # stays on the host (see PackedDocuments)
        "max_seqlen": int(lens.max()),
        "num_tokens": int(sum(len(r["input_ids"]) for r in rows)),
        **work,
    }


def _work(rows: list[dict], targets: np.ndarray) -> dict:
    """Host-side counts of the work a micro-batch makes (``models.flops.batch_training_flops``): its real
    documents' lengths (padding excluded) and its tokens with a target (all CP ranks' together, so
    ``targets`` must be the micro-batch's before the CP split)."""
    return {"doc_lens": tuple(int(n) for row in rows for n in row["doc_lens"]),
            "num_projected": int((targets != IGNORE_INDEX).sum())}


def packed_seq_params(batch: dict) -> PackedDocuments | None:
    """The attention's packed-document description of a ``collate_thd`` batch (None for sbhd batches)."""
    if "cu_seqlens_padded" not in batch:
        return None
    cu, cu_pad, longest = batch["cu_seqlens"], batch["cu_seqlens_padded"], batch["max_seqlen"]
    return PackedDocuments(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_pad,
        cu_seqlens_kv_padded=cu_pad, max_seqlen_q=longest, max_seqlen_kv=longest,
        boundaries=batch["document_bounds"],
    )


def collate_sbhd(rows: list[dict], capacity: int, cp_size: int, cp_rank: int, pad_id: int) -> dict:
    """One conversation per row -> [b, capacity] (CP: this rank's load-balanced chunks of each row)."""
    b = len(rows)
    tokens = np.full((b, capacity), pad_id, dtype=np.int64)
    targets = np.full((b, capacity), IGNORE_INDEX, dtype=np.int64)
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        if len(row["doc_lens"]) != 1:
            raise ValueError(f"a row holds {len(row['doc_lens'])} documents but the data is not packed (sbhd layout)")
        if n > capacity:
            raise ValueError(f"row of {n} tokens is longer than the row capacity {capacity}")
        tokens[r, :n] = row["input_ids"]
        targets[r, :n] = shift_within_docs(row["labels"], np.asarray([n]))
    work = _work(rows, targets)
    index = np.arange(capacity)
    if cp_size > 1:
        index = cp_token_layout(torch.tensor([0, capacity]), cp_size, cp_rank)[2].numpy()
        tokens, targets = tokens[:, index], targets[:, index]
    return {
        "tokens": torch.from_numpy(np.ascontiguousarray(tokens)),
        "labels": torch.from_numpy(np.ascontiguousarray(targets)),
        "position_ids": torch.from_numpy(np.broadcast_to(index, (b, len(index))).copy()),
        "num_tokens": int(sum(len(r["input_ids"]) for r in rows)),
        **work,
    }
