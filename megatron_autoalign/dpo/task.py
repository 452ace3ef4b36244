"""DPO (and its loss family) as a ``Task`` of the shared training loop (contract: ``training/task.py``).

A sample is a dataset row: one pair, or several whole pairs when the data is packed. The loss is the
mean over the pairs of the global batch (count = pairs). Reference log-probs come from
- ``--reference online``: the loop's frozen reference model (same TP/PP), scored by a forward-only
  schedule over the step's micro-batches before the policy's forward/backward;
- ``--reference precomputed``: the dataset's recorded scoring pass (``dpo.score_reference``), no
  reference model at all;
- nothing for SimPO (reference-free).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import parallel_state

from ..training.config import row_tokens
from ..training.data_checks import check_manifest
from ..training.row_data import row_layout, train_valid_datasets
from ..training.sft_batch import packed_seq_params
from ..training.task import Task, TaskContext
from .batch import collate_pairs
from .dataset import PreferenceDataset
from .logprobs import sequence_logps
from .flags import add_arguments as add_dpo_arguments
from .losses import PreferenceLossConfig, preference_loss


@dataclass(frozen=True)
class DPOConfig:
    """``cfg.task`` of a DPO run: the flags ``DPOTask.add_arguments`` adds."""

    loss_type: str
    beta: float
    label_smoothing: float
    rpo_alpha: float
    simpo_gamma: float
    reference: str  # as given: online | precomputed
    ref_load: Optional[str]

    @property
    def loss(self) -> PreferenceLossConfig:
        return PreferenceLossConfig(self.loss_type, self.beta, self.label_smoothing, self.rpo_alpha, self.simpo_gamma)

    @property
    def reference_source(self) -> str:
        """online | precomputed | none: a reference-free loss (SimPO) uses no reference whatever --reference says."""
        return self.reference if self.loss.needs_reference else "none"

    @property
    def warnings(self) -> tuple:
        """Given flags without effect (the run config prints them)."""
        given = [flag for flag, on in (("--reference precomputed", self.reference == "precomputed"),
                                       ("--ref-load", bool(self.ref_load))) if on]
        if self.loss.needs_reference or not given:
            return ()
        return (f"--loss-type {self.loss_type} is reference-free: {' and '.join(given)} without effect",)


class DPOTask(Task):
    name = "dpo"
    primary_metric = "loss"
    config_class = DPOConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss_cfg = cfg.task.loss
        self.needs_reference_model = cfg.task.reference_source == "online"

    def reference_checkpoint(self) -> Optional[str]:
        return self.cfg.task.ref_load or self.cfg.checkpoint.pretrained_checkpoint

    @classmethod
    def add_arguments(cls, parser) -> None:
        add_dpo_arguments(parser)  # dpo/flags.py: light, for a fast --help

    # --- data -----------------------------------------------------------------------------------------
    def build_datasets(self, ctx: TaskContext):
        use_ref = self.cfg.task.reference_source == "precomputed"
        data = train_valid_datasets(self.cfg.data, lambda prefix: PreferenceDataset(prefix, use_reference=use_ref))
        ctx.manifest = self.manifest = data.manifest
        self.setup_layout(data.max_docs, packed=data.packed)
        return data.train, data.valid

    def setup_layout(self, max_docs: int, manifest: dict | None = None, packed: bool | None = None) -> None:
        """Row layout from the manifest (``max_docs``: most documents in any row; ``packed``: the layout,
        by default the manifest's). Packed rows hold whole pairs in 2 x seq tokens; unpacked, every
        sequence (chosen or rejected) is its own row."""
        if manifest is not None:
            self.manifest = manifest
        seq = row_tokens(self.cfg.data, self.manifest)
        packed = bool(self.manifest["packing"]) if packed is None else packed
        self.layout = row_layout(self.cfg.parallel, self.manifest, 2 * seq if packed else seq, max_docs, packed)

    def check(self, ctx: TaskContext) -> None:
        check_manifest(self.manifest, ctx.cfg, ctx.hf_config)
        if self.cfg.task.reference_source == "precomputed":
            self._check_recorded_reference()

    def _check_recorded_reference(self) -> None:
        """Recorded log-probs of another checkpoint or precision still train, but not against the intended
        reference: say so (a warning, not an error: checkpoints get moved)."""
        from ..runtime import print_rank_0

        entry = self.manifest.get("reference") or {}
        source = os.path.abspath(self.reference_checkpoint() or "")
        precision = self.cfg.model.precision
        if entry.get("checkpoint") != source or entry.get("precision") != precision:
            print_rank_0(f"warning: {self.cfg.data.data_path}: reference log-probs were scored from {entry.get('checkpoint')} "
                         f"({entry.get('precision')}), this run's reference is {source} ({precision})")

    def pipeline_shape(self) -> tuple[int, int]:
        mbs = self.cfg.training.micro_batch_size
        lay = self.layout
        return (mbs * lay.capacity, 1) if lay.packed else (lay.capacity, 2 * mbs)

    def collate(self, samples: list) -> dict:
        lay = self.layout
        return collate_pairs(samples, lay.packed, lay.capacity, lay.cp, lay.cp_rank, lay.pad_id)

    def flops_multiplier(self) -> float:
        return 4 / 3 if self.needs_reference_model else 1.0  # + one forward (1/3 of fwd+bwd)

    # --- forward and loss ----------------------------------------------------------------------------
    @staticmethod
    def _run(model, batch):
        """Per-token CE of the batch's targets (last stage) or the stage's activations (other stages)."""
        # -100 targets stay as they are: the model's CEs (the fused linear CE, megatron's vocab-parallel CE)
        # give them loss 0 / treat them as out of range, and seq_ids excludes them from the sums anyway.
        return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                     packed_seq_params=packed_seq_params(batch))

    def forward_step(self, batch: dict, model):
        return self._run(model, batch), functools.partial(self._loss, batch)

    def _logps(self, batch, per_token_ce):
        """[P, 2] (chosen, rejected) summed log-probs of whole sequences (CP partial sums reduced)."""
        sums = sequence_logps(per_token_ce, batch["seq_ids"], 2 * batch["num_pairs"],
                              parallel_state.get_context_parallel_group() if self.layout.cp > 1 else None)
        return sums.view(-1, 2)

    def _loss(self, batch, per_token_ce):
        logps = self._logps(batch, per_token_ce)
        lens = batch["seq_trained"].view(-1, 2)
        ref = batch.get("ref_logps")
        if self.loss_cfg.needs_reference and ref is None:
            raise RuntimeError("DPO loss: the batch has no reference log-probs (prepare_global_batch did not run?)")
        ref_c, ref_r = (ref[:, 0], ref[:, 1]) if ref is not None else (None, None)
        losses, metrics = preference_loss(self.loss_cfg, logps[:, 0], logps[:, 1], lens[:, 0], lens[:, 1], ref_c, ref_r)
        loss_sum = losses.sum()
        # CP: every CP rank holds the full loss (its gradient flows to its own tokens); count the pairs once.
        n = batch["num_pairs"] if self.layout.cp_rank == 0 else 0
        # torch.full writes the count on the device; torch.tensor(n, device=...) would copy it from the host.
        pairs = torch.full((), float(n), device=loss_sum.device)
        metrics["loss"] = losses.detach()
        out = {name: torch.stack([per_pair.sum() * (1.0 if n else 0.0), pairs]) for name, per_pair in metrics.items()}
        count = pairs.to(torch.int)
        return loss_sum, count, out

    # --- reference ----------------------------------------------------------------------------------------
    def _reference_step(self, batch: dict, model):
        return self._run(model, batch), functools.partial(self._reference_output, batch)

    def _reference_output(self, batch, per_token_ce):
        logps = self._logps(batch, per_token_ce).detach()
        zero = torch.zeros((), device=logps.device)
        return zero, torch.zeros((), dtype=torch.int, device=logps.device), {"ref_logps": logps}

    def score(self, model, batches: list, ctx: TaskContext):
        """Forward-only log-probs of ``model`` for the batches: list of [P, 2] on the last stage, else None."""
        with torch.no_grad():
            out = ctx.forward_only(model, batches, self._reference_step)
        if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return [o["ref_logps"] for o in out]

    def prepare_global_batch(self, batches: list, ctx: TaskContext) -> None:
        if not self.needs_reference_model:
            return
        scores = self.score(ctx.reference_model, batches, ctx)
        if scores is not None:
            for batch, ref in zip(batches, scores):
                batch["ref_logps"] = ref
