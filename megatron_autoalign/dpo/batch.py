"""DPO rows -> one micro-batch for this rank, on top of the SFT layouts (``training/sft_batch.py``).

A row holds whole pairs as documents [chosen, rejected, chosen, ...]; the micro-batch numbers its
sequences 0..2P-1 in that order (pair k: chosen 2k, rejected 2k+1). Besides the SFT keys it carries
``seq_ids`` (the sequence slot of every local token, -1 for padding), ``seq_trained`` (trained tokens of
every WHOLE sequence, for length-normalised losses under CP), ``num_pairs`` and ``pair_index``.

- packed data -> ``thd``: the SFT packed layout; a token's document comes from ``cp_token_layout``;
- one pair per row -> ``sbhd``: chosen and rejected become two rows of a [2P, capacity] batch, so plain
  causal attention suffices and each side may use the full per-sequence length.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.attention import cp_token_layout
from ..training.sft_batch import IGNORE_INDEX, collate_sbhd, collate_thd


def _docs(row: dict):
    """Split a row into its documents: [(ids, labels)]."""
    cut = np.cumsum(row["doc_lens"])[:-1]
    return list(zip(np.split(row["input_ids"], cut), np.split(row["labels"], cut)))


def collate_pairs(rows: list[dict], packed: bool, capacity: int, cp_size: int, cp_rank: int, pad_id: int) -> dict:
    docs = [d for row in rows for d in _docs(row)]
    if len(docs) % 2:
        raise ValueError("a micro-batch holds an odd number of sequences: pairs were split")
    if packed:
        batch = collate_thd(rows, capacity, cp_size, cp_rank, pad_id)
        unit = 2 * cp_size if cp_size > 1 else 1
        slots, nxt = [], 0
        for row in rows:  # mirror collate_thd's document list: real documents, then an optional fill document
            n = len(row["doc_lens"])
            slots += range(nxt, nxt + n)
            nxt += n
            if capacity - int((-(-np.asarray(row["doc_lens"]) // unit) * unit).sum()) > 0:
                slots.append(-1)
        doc_of_token = cp_token_layout(batch["cu_seqlens_padded"], cp_size, cp_rank)[0]
        seq_ids = torch.tensor(slots, dtype=torch.long)[doc_of_token].unsqueeze(0)
    else:
        if any(len(row["doc_lens"]) != 2 for row in rows):
            raise ValueError("unpacked DPO rows must hold exactly one pair")
        batch = collate_sbhd([{"input_ids": i, "labels": lab, "doc_lens": np.asarray([len(i)])} for i, lab in docs],
                             capacity, cp_size, cp_rank, pad_id)
        seq_ids = torch.arange(len(docs)).unsqueeze(1).expand_as(batch["tokens"]).contiguous()
    seq_ids = seq_ids.masked_fill(batch["labels"] == IGNORE_INDEX, -1)
    # The target of position i is labels[i+1]: a document's trained count is over labels[1:].
    batch["seq_trained"] = torch.tensor([int((lab[1:] != IGNORE_INDEX).sum()) for _, lab in docs], dtype=torch.long)
    batch["seq_ids"] = seq_ids
    batch["num_pairs"] = len(docs) // 2
    batch["pair_index"] = torch.tensor([row["pair_index"] + k for row in rows for k in range(len(row["doc_lens"]) // 2)],
                                       dtype=torch.long)
    if all("ref_logps" in row for row in rows):
        batch["ref_logps"] = torch.from_numpy(np.concatenate([row["ref_logps"] for row in rows]).astype(np.float32))
    return batch
