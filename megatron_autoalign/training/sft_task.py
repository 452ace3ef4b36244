"""SFT as a ``Task``: packed chat rows, next-token cross entropy averaged over every trained token of the
global batch (see ``task.py`` for the normalisation contract)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from megatron.core import parallel_state

from .sft_batch import IGNORE_INDEX, collate_sbhd, collate_thd, packed_seq_params, row_capacity
from .data_checks import check_manifest, pad_id
from .task import Task, TaskContext


def split_ranges(n: int, fractions: list[float]) -> list[tuple[int, int]]:
    """Contiguous train/valid/test index ranges from split fractions (like megatron's --split)."""
    bounds = np.round(np.cumsum([0.0] + list(fractions)) * n).astype(int)
    bounds[-1] = n
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(3)]


class _Range(torch.utils.data.Dataset):
    def __init__(self, ds, lo: int, hi: int):
        self.ds, self.lo, self.hi = ds, lo, hi

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, i):
        return self.ds[self.lo + int(i)]


def max_docs_per_row(prefix: str) -> int:
    """Most conversations in any row (from the idx file; sizes the per-document CP padding room)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(f"{prefix}_input_ids", mmap=True)
    docs = np.array(ds.document_indices)  # copy while the mmap is open (a view would outlive it)
    del ds
    return int(np.diff(docs).max()) if len(docs) > 1 else 1


class SFTTask(Task):
    name = "sft"
    primary_metric = "lm loss"

    def build_datasets(self, ctx: TaskContext):
        from megatron_autoalign.data.sft_dataset import SFTDataset

        args = self.args
        full = SFTDataset(args.data_path)
        ctx.manifest = self.manifest = full.manifest
        train_r, valid_r, _ = split_ranges(len(full), args.split_fractions)
        train = _Range(full, *train_r)
        valid = _Range(full, *valid_r) if valid_r[1] > valid_r[0] else None
        prefixes = [args.data_path]
        self.packed = bool(self.manifest.get("packing", True))
        if args.valid_data_path:
            vds = SFTDataset(args.valid_data_path)
            if vds.manifest.get("seq_len") != self.manifest.get("seq_len"):
                raise ValueError(f"{args.valid_data_path}: seq_len {vds.manifest.get('seq_len')} differs from the training data's {self.manifest.get('seq_len')}")
            valid = _Range(vds, 0, len(vds))
            prefixes.append(args.valid_data_path)
            # one layout for the run (fixed pipeline shapes): thd if either set packs conversations
            self.packed = self.packed or bool(vds.manifest.get("packing", True))
        if len(train) == 0:
            raise ValueError(f"{args.data_path}: no training rows (split {args.split})")
        self._setup_layout(max(max_docs_per_row(p) for p in prefixes))
        return train, valid

    def _setup_layout(self, max_docs: int) -> None:
        args = self.args
        m = self.manifest
        if args.seq_length is None:
            args.seq_length = int(m["seq_len"])
        self.seq_len = args.max_padding_length or args.seq_length
        if self.seq_len < args.seq_length:
            raise ValueError(f"--max-padding-length {self.seq_len} is shorter than --seq-length {args.seq_length}")
        self.cp = parallel_state.get_context_parallel_world_size()
        self.cp_rank = parallel_state.get_context_parallel_rank()
        tp_sp = args.tensor_model_parallel_size if args.sequence_parallel else 1
        self.capacity = row_capacity(self.seq_len, self.cp, tp_sp, max_docs, self.packed)
        self.pad_id = pad_id(m)

    def check(self, ctx: TaskContext) -> None:
        check_manifest(self.manifest, self.args, ctx.hf_config)

    def pipeline_shape(self) -> tuple[int, int]:
        mbs = self.args.micro_batch_size
        return (mbs * self.capacity, 1) if self.packed else (self.capacity, mbs)

    def collate(self, samples: list) -> dict:
        fn = collate_thd if self.packed else collate_sbhd
        return fn(samples, self.capacity, self.cp, self.cp_rank, self.pad_id)

    def forward_step(self, batch: dict, model):
        labels = batch["labels"]
        mask = labels != IGNORE_INDEX
        # -100 targets: the model's fused loss skips them (zero loss, no output-layer work); megatron's
        # unfused vocab-parallel CE treats them as out-of-vocabulary; either way the mask zeroes them.
        output = model(batch["tokens"], batch["position_ids"], None, labels=labels,
                       packed_seq_params=packed_seq_params(batch))
        return output, functools.partial(_token_loss, mask)


def _token_loss(mask: torch.Tensor, per_token: torch.Tensor):
    """(sum of CE over trained tokens, trained-token count, metrics) — the per-token contract."""
    loss_sum = (per_token.float() * mask).sum()
    count = mask.sum().to(torch.int)
    return loss_sum, count, {"lm loss": torch.stack([loss_sum.detach(), count.detach().float()])}
