"""SFT as a ``Task``: packed chat rows, next-token cross entropy averaged over every trained token of the
global batch (see ``task.py`` for the normalisation contract)."""

from __future__ import annotations

import functools

import torch

from .config import row_tokens
from .data_checks import check_manifest
from .row_data import row_layout, train_valid_datasets
from .sft_batch import IGNORE_INDEX, collate_sbhd, collate_thd, packed_seq_params
from .task import Task, TaskContext


class SFTTask(Task):
    name = "sft"
    primary_metric = "lm loss"

    def build_datasets(self, ctx: TaskContext):
        from megatron_autoalign.data.sft_dataset import SFTDataset

        data = train_valid_datasets(self.cfg.data, SFTDataset)
        ctx.manifest = self.manifest = data.manifest
        seq = row_tokens(self.cfg.data, self.manifest)
        self.layout = row_layout(self.cfg.parallel, self.manifest, seq, data.max_docs, data.packed)
        return data.train, data.valid

    def check(self, ctx: TaskContext) -> None:
        check_manifest(self.manifest, ctx.cfg, ctx.hf_config)

    def pipeline_shape(self) -> tuple[int, int]:
        mbs, lay = self.cfg.training.micro_batch_size, self.layout
        return (mbs * lay.capacity, 1) if lay.packed else (lay.capacity, mbs)

    def collate(self, samples: list) -> dict:
        lay = self.layout
        fn = collate_thd if lay.packed else collate_sbhd
        return fn(samples, lay.capacity, lay.cp, lay.cp_rank, lay.pad_id)

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
