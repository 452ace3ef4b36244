"""What the SFT and DPO tasks share about their data: the train/valid split of an indexed dataset (or a
separate validation set), and the fixed row layout every micro-batch is collated into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from megatron.core import parallel_state

from .data_checks import pad_id
from .sft_batch import row_capacity


def split_ranges(n: int, fractions: list[float]) -> list[tuple[int, int]]:
    """Contiguous train/valid/test index ranges from split fractions (like megatron's --split)."""
    bounds = np.round(np.cumsum([0.0] + list(fractions)) * n).astype(int)
    bounds[-1] = n
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(3)]


class IndexRange(torch.utils.data.Dataset):
    """Rows [lo, hi) of a dataset."""

    def __init__(self, ds, lo: int, hi: int):
        self.ds, self.lo, self.hi = ds, lo, hi

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, i):
        return self.ds[self.lo + int(i)]


def max_docs_per_row(prefix: str) -> int:
    """Most documents in any row (from the idx file; sizes the per-document CP padding room)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(f"{prefix}_input_ids", mmap=True)
    docs = np.array(ds.document_indices)  # copy while the mmap is open (a view would outlive it)
    del ds
    return int(np.diff(docs).max()) if len(docs) > 1 else 1


@dataclass
class SplitData:
    manifest: dict   # the training data's
    train: IndexRange
    valid: IndexRange | None
    packed: bool     # thd layout: either set packs documents (one layout per run, fixed pipeline shapes)
    max_docs: int    # most documents in any row of either set


def train_valid_datasets(data, open_dataset) -> SplitData:
    """``--data-path`` split by ``--split``; ``--valid-data-path`` replaces the validation part.
    ``data``: the run's DataConfig; ``open_dataset(prefix)`` returns an indexed dataset with a ``manifest``."""
    full = open_dataset(data.data_path)
    manifest = full.manifest
    train_r, valid_r, _ = split_ranges(len(full), data.split_fractions)
    train = IndexRange(full, *train_r)
    valid = IndexRange(full, *valid_r) if valid_r[1] > valid_r[0] else None
    prefixes, packed = [data.data_path], bool(manifest.get("packing", True))
    if data.valid_data_path:
        vds = open_dataset(data.valid_data_path)
        if vds.manifest.get("seq_len") != manifest.get("seq_len"):
            raise ValueError(f"{data.valid_data_path}: seq_len {vds.manifest.get('seq_len')} differs from the "
                             f"training data's {manifest.get('seq_len')}")
        valid = IndexRange(vds, 0, len(vds))
        prefixes.append(data.valid_data_path)
        packed = packed or bool(vds.manifest.get("packing", True))
    if len(train) == 0:
        raise ValueError(f"{data.data_path}: no training rows (split {data.split})")
    return SplitData(manifest, train, valid, packed, max(max_docs_per_row(p) for p in prefixes))


@dataclass
class RowLayout:
    packed: bool
    capacity: int  # padded tokens per row: room for per-document CP padding, divisible by 2*CP*TP(SP)
    cp: int
    cp_rank: int
    pad_id: int


def row_layout(parallel, manifest: dict, row_tokens: int, max_docs: int, packed: bool) -> RowLayout:
    """This rank's row layout for rows of ``row_tokens`` data tokens (``parallel``: the ParallelConfig)."""
    cp = parallel_state.get_context_parallel_world_size()
    tp_sp = parallel.tensor_model_parallel_size if parallel.sequence_parallel else 1
    return RowLayout(packed, row_capacity(row_tokens, cp, tp_sp, max_docs, packed), cp,
                     parallel_state.get_context_parallel_rank(), pad_id(manifest))
