"""The task interface: what SFT and DPO plug into the ONE training loop (``training/loop.py``).

The loop owns everything that is the same for every objective: distributed start-up, the model
(policy) and its DDP wrapper, the optimizer and LR schedule, the data order (sampler, epochs, resume
position), megatron's pipeline schedule, gradient clipping, NaN skipping, checkpoints, validation,
logging. A task owns what differs: its data, how samples become a micro-batch, the forward call and
its loss. The loop drives a task like this::

    task = TaskClass(cfg)                        # cfg: the frozen RunConfig (config.py); cfg.task: the task's own
    task.check(ctx)                              # start-up checks (one-line errors)
    train, valid = task.build_datasets(ctx)      # map-style datasets; item i = ONE SAMPLE; sets ctx.manifest
    ctx.cfg = ...                                # completed by the data (sequence length, iterations)
    ctx.reference_model = ...                    # only if task.needs_reference_model (frozen, see below)
    seq_length, mbs = task.pipeline_shape()      # shape of the tensors sent between pipeline stages
    for each step:
        for each micro-batch on this DP rank:    # the loop picks the sample indices
            batch = task.collate([train[i] for i in indices])   # CPU tensors, CP-local already
        task.prepare_global_batch(batches, ctx)  # optional hook (DPO: reference log-probs)
        forward_backward(task.forward_step, batches moved to the device, ...)

Samples and batch sizes. ``--micro-batch-size`` and ``--global-batch-size`` count SAMPLES, i.e. items of
the task's dataset: a packed row for SFT, a (chosen, rejected) PAIR for DPO. ``collate`` receives whole
samples, so a pair is never split across micro-batches or ranks. The loop gives every rank of a
DP replica (all its TP/PP/CP ranks) the same sample indices; every rank collates (collation is cheap CPU
work, and every pipeline stage needs the document boundaries for attention masking).

Loss normalisation (megatron-core ``calculate_per_token_loss=True``, which the loop always sets).
``forward_step`` returns ``(output_tensor, loss_func)``; on the last pipeline stage
``loss_func(output_tensor)`` must return ``(loss_sum, count, metrics)``:

- ``loss_sum``: scalar tensor, the SUM of the per-unit losses in this micro-batch on this rank;
- ``count``: int scalar tensor, the number of units in it (SFT: trained tokens on this CP rank; DPO: pairs);
- ``metrics``: ``{name: tensor([sum, count])}`` (detached, float) for logging.

megatron sums ``count`` over micro-batches, PP, and DP x CP ranks, all-reduces gradients with SUM and
divides them by that total: the gradient is exactly d(sum of all unit losses in the global batch) /
(total units). For SFT this is the per-token mean over the whole global batch. With context parallel
each CP rank holds a slice of every sequence; a task whose loss is not a plain sum over tokens (DPO needs
full-sequence log-probs) must all-reduce its partial sums across the CP group itself and return the
count on ONE CP rank only (e.g. ``count if cp_rank == 0 else 0``) with ``loss_sum`` scaled to match, so
that units are not counted CP times.
The loop reports each metric as sum(sums) / sum(counts) over the global batch (micro-batches and DP x CP
ranks); ``task.primary_metric`` names the one used for the "loss" line, validation and NaN checks.

Reference model. A task with ``needs_reference_model = True`` gets ``ctx.reference_model``: model
chunks built exactly like the policy (same TP/PP/VPP split, same dtype), loaded from
``task.reference_checkpoint()`` (default ``--pretrained-checkpoint``), in eval mode, ``requires_grad=False``,
without DDP or optimizer. Because pipeline stages only pass one activation tensor, the reference
forward cannot run inside the policy's forward_step when PP > 1; instead use
``ctx.forward_only(ctx.reference_model, batches, forward_step_func)`` from ``prepare_global_batch``: it
runs megatron's forward-only schedule over the micro-batches and returns, on the last pipeline stage,
the list of whatever ``loss_func`` returned as metrics per micro-batch (``None`` on other stages). Store
results in the batch dicts; ``forward_step`` can then read them on the last stage.

The batch dict. ``collate`` returns a dict of CPU tensors (the loop moves every tensor value to the
device with one non_blocking copy; non-tensor values are passed through). Two keys are read by the loop:
``"num_tokens"`` (int, tokens processed by this micro-batch on this rank, for tokens/s and MFU) and
nothing else; everything else is the task's own business.
"""

from __future__ import annotations

import abc
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch


@dataclass
class TaskContext:
    """What the loop shares with a task. Filled by the loop; tasks read it."""

    cfg: Any  # the RunConfig (training/config.py); the loop replaces it by the one completed by the data
    hf_config: dict
    manifest: Optional[dict] = None  # the training data's manifest once build_datasets ran
    reference_model: Optional[list] = None  # frozen model chunks (needs_reference_model)
    # forward_only(model_chunks, batches, forward_step_func) -> list | None (see module docstring)
    forward_only: Optional[Callable[..., Any]] = None
    extras: dict = field(default_factory=dict)


class Task(abc.ABC):
    """Base class of a training objective (SFT, DPO). See the module docstring for the contract."""

    name: str = "task"
    needs_reference_model: bool = False
    primary_metric: str = "lm loss"

    # A frozen dataclass whose fields are named like the flags ``add_arguments`` adds (their dests);
    # the parsed values become ``cfg.task``. None: the task has no flags of its own.
    config_class: Optional[type] = None

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Task-specific flags (e.g. DPO's --beta). Called before parsing."""

    def reference_checkpoint(self) -> Optional[str]:
        """Where the frozen reference model's weights come from (``needs_reference_model``)."""
        return self.cfg.checkpoint.pretrained_checkpoint

    def check(self, ctx: TaskContext) -> None:
        """Start-up checks after the datasets exist; raise ``ValueError`` with a one-line message."""

    @abc.abstractmethod
    def build_datasets(self, ctx: TaskContext) -> tuple[torch.utils.data.Dataset, Optional[torch.utils.data.Dataset]]:
        """(train, valid or None): map-style datasets whose items are whole samples."""

    @abc.abstractmethod
    def pipeline_shape(self) -> tuple[int, int]:
        """(seq_length, micro_batch_size) of the activations passed between pipeline stages, before the
        CP/SP division megatron applies; must be the same for every micro-batch of the run."""

    @abc.abstractmethod
    def collate(self, samples: list) -> dict:
        """Samples of one micro-batch -> dict of CPU tensors for THIS rank (already split for CP)."""

    @abc.abstractmethod
    def forward_step(self, batch: dict, model) -> tuple[torch.Tensor, Callable]:
        """Run ``model`` on the device batch; return (output_tensor, loss_func) (see module docstring)."""

    def prepare_global_batch(self, batches: list, ctx: TaskContext) -> None:
        """Hook before each step's forward/backward (and each validation step), on device batches."""

    def flops_multiplier(self) -> float:
        """Model FLOPs per step relative to one forward+backward of the policy (DPO + reference: 4/3)."""
        return 1.0
