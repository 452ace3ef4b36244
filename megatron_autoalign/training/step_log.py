"""The training log: one line per log point on stdout (last rank), the same record in ``--log-json``, TensorBoard
(``--tensorboard-dir``) and Weights & Biases (``--wandb-project``); an end-of-run summary line.

Lines carry Megatron-LM's fields (``elapsed time per iteration (ms)``, ``learning rate``, ``global batch size``,
the loss, ``grad norm``, skipped and NaN iterations) plus tokens/s, memory and an ETA. Time spent in
validation and checkpoint saves is measured apart (``paused``) and left out of the interval it falls in, so
the step after a save does not look slow. With several nodes the full line prints on the last rank (the
last pipeline stage holds the loss), which is on the last node: rank 0 then prints a compact progress
line too, so node 0's log shows progress.

A log point's GPU values (token count, the task's metrics) are read one step late through
``DeferredScalars``: ``queue`` starts their copy to the host and ``flush`` prints them. The loop flushes
right after the next step's grad-norm check, which has already waited for the GPU, and before anything
else it prints (validation, checkpoints, the end), so lines stay in order and the host never waits for
the optimizer update just to log.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import time

import torch
import torch.distributed as dist

from megatron_autoalign.runtime import is_last_rank
from megatron_autoalign.runtime.transfer import to_device_async

from .deferred import DeferredScalars
from .trackers import Trackers

_TOKENS = "__tokens"  # the token count travels with the task's metrics under a name no metric uses
_FLOPS = "__flops"  # and so do the FLOPs computed (models/flops.py: computed_training_flops)
clock = time.time  # one name for the clock (tests replace it)


def process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def node_count() -> int:
    """Nodes of this torchrun job (torchrun's GROUP_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1"))


def memory_field() -> tuple[str, float]:
    """(label, GB): the peak allocated GPU memory, or this process's resident memory on CPU."""
    if torch.cuda.is_available():
        return "peak allocated", torch.cuda.max_memory_allocated() / 1e9
    import psutil

    return "RSS", psutil.Process().memory_info().rss / 1e9


class StepLogger:
    def __init__(self, cfg, hf_cfg: dict, task):
        """``cfg``: the run config (``config.py``), completed by the data."""
        self.cfg, self.hf_cfg, self.task = cfg, hf_cfg, task
        self.pending = None  # (DeferredScalars, host-side values) of a log point not printed yet
        self.full = is_last_rank()  # prints the full line, writes the trackers
        self.compact = dist.get_rank() == 0 and not self.full and node_count() > 1
        self.trackers = Trackers(cfg) if self.full else None
        # The current interval: start, time paused in validation/saves, steps, skipped and NaN steps.
        self.t0, self.paused_s, self.steps, self.skipped, self.nans = clock(), 0.0, 0, 0, 0
        # The whole run (this process): training seconds and steps (for the ETA), tokens, paused time by kind.
        self.run_train_s, self.run_steps, self.run_tokens = 0.0, 0, 0.0
        self.paused_by_kind: dict[str, float] = {}

    # -- what the loop reports
    def step_done(self, grad_norm: float, stepped: bool) -> None:
        """After every optimizer step (skipped ones included)."""
        self.steps += 1
        if not stepped:
            self.skipped += 1
            self.nans += int(math.isnan(grad_norm))

    @contextlib.contextmanager
    def paused(self, kind: str):
        """Time spent inside (``validation``, ``checkpoint``) is not training time: it leaves the interval."""
        start = clock()
        try:
            yield
        finally:
            took = clock() - start
            self.paused_s += took
            self.paused_by_kind[kind] = self.paused_by_kind.get(kind, 0.0) + took

    def queue(self, iteration: int, acc, grad_norm: float, lr: float, tokens: int, consumed_samples: int,
              skipped_total: int, device, flops: float = 0.0) -> None:
        """Log point: ``acc`` maps metric -> [sum, count] tensors (reduced over DP on the last rank);
        ``tokens`` this rank's tokens since the last log point, ``flops`` the FLOPs its micro-batches
        computed; ``skipped_total`` skipped steps of the whole training (resumes included). Every rank
        must call this."""
        from megatron.core import parallel_state as ps

        seconds = clock() - self.t0 - self.paused_s
        known = {"iteration": iteration, "steps": self.steps, "seconds": seconds, "grad_norm": grad_norm,
                 "lr": lr, "consumed_samples": consumed_samples, "skipped": self.skipped, "nans": self.nans,
                 "skipped_total": skipped_total, "time": timestamp()}
        self.t0, self.paused_s, self.steps, self.skipped, self.nans = clock(), 0.0, 0, 0, 0
        self.run_train_s += seconds
        self.run_steps += known["steps"]
        # tokens and FLOPs counted per DP replica: sum over DP (CP ranks saw the same samples).
        tok = to_device_async(torch.tensor([tokens, flops], dtype=torch.float64), device)
        dist.all_reduce(tok, group=ps.get_data_parallel_group())
        if not (self.full or self.compact):
            return
        self.flush()
        acc = acc if self.full else None
        scalars = {_TOKENS: tok[0], _FLOPS: tok[1], **{k: v[0] / v[1].clamp(min=1) for k, v in (acc or {}).items()}}
        self.pending = (DeferredScalars(scalars), known)

    def flush(self) -> None:
        """Print and record the queued log point, if any."""
        if self.pending is None:
            return
        deferred, known = self.pending
        self.pending = None
        values = deferred.get()
        tokens = values.pop(_TOKENS)
        flops_per_s = values.pop(_FLOPS) / max(known["seconds"], 1e-9)
        self.run_tokens += tokens
        tps = tokens / max(known["seconds"], 1e-9)
        ms = 1000 * known["seconds"] / max(known["steps"], 1)
        eta = hms((self.cfg.training.train_iters - known["iteration"]) * self.run_train_s / max(self.run_steps, 1))
        mem_label, mem_gb = memory_field()
        head = f"[{known['time']}] iteration {known['iteration']}/{self.cfg.training.train_iters} |"
        if not self.full:  # node 0 of a multi-node run: progress only (the loss is on the last node's log)
            print(f"{head} elapsed time per iteration (ms): {ms:.1f} | tokens/s: {tps:,.0f} | "
                  f"grad norm: {known['grad_norm']:.3f} | ETA {eta} | (loss: see the last node's log)", flush=True)
            return
        primary = self.task.primary_metric
        rec = {"iteration": known["iteration"], "loss": values.get(primary), "grad_norm": known["grad_norm"],
               "lr": known["lr"], "tokens_per_s": tps, "skipped_steps": known["skipped_total"],
               "skipped_iterations": known["skipped"], "nan_iterations": known["nans"], "elapsed_ms_per_iteration": ms,
               "consumed_samples": known["consumed_samples"], "memory_gb": mem_gb,
               **{k: v for k, v in values.items() if k != primary}}
        line = (f"{head} consumed samples: {known['consumed_samples']} | elapsed time per iteration (ms): {ms:.1f} | "
                f"learning rate: {known['lr']:.6E} | global batch size: {self.cfg.training.global_batch_size} | "
                f"{primary}: {rec['loss']:.6E} | grad norm: {known['grad_norm']:.3f} | "
                f"number of skipped iterations: {known['skipped']} | number of nan iterations: {known['nans']} | "
                f"tokens/s: {tps:,.0f}")
        mfu = self._mfu(tps, flops_per_s)
        if mfu is not None:
            rec["tflops_per_gpu"], rec["mfu"], rec["tflops_actual_per_gpu"], rec["mfu_actual"] = mfu
            rec["peak_memory_gb"] = mem_gb
            line += f" | TFLOP/s/GPU: {mfu[2]:.1f} | MFU: {100 * mfu[3]:.1f}% (full-row formula {100 * mfu[1]:.1f}%)"
        line += f" | mem ({mem_label}): {mem_gb:.2f} GB | ETA {eta}"
        for k, v in values.items():
            if k != primary:
                line += f" | {k}: {v:.4f}"
        print(line, flush=True)
        self.record(rec)

    def record(self, rec: dict) -> None:
        """One record (training or validation) to the trackers and the JSON log. Training values are named
        ``train/<name>`` in the trackers (DPO's ``rewards/accuracy`` -> ``train/rewards/accuracy``)."""
        if self.trackers is not None:
            named = {k if k.startswith("valid/") else f"train/{k}": v for k, v in rec.items() if k != "iteration"}
            self.trackers.scalars(named, rec["iteration"])
        if self.cfg.logging.log_json:
            with open(self.cfg.logging.log_json, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def summary(self, iteration: int, start_iteration: int, checkpoint: str | None) -> None:
        """The end-of-run line (after the last flush), on the ranks that print lines."""
        if not (self.full or self.compact):
            return
        wall = clock() - process_start()
        paused = "".join(f", {k} {hms(v)}" for k, v in sorted(self.paused_by_kind.items()))
        where = checkpoint or ("none saved (no --save)" if not self.cfg.checkpoint.save else "none saved in this run")
        print(f"[{timestamp()}] training done: iteration {iteration}/{self.cfg.training.train_iters} "
              f"({iteration - start_iteration} in this run) | tokens: {self.run_tokens:,.0f} | "
              f"wall time {hms(wall)} (training {hms(self.run_train_s)}{paused}) | checkpoint: {where}", flush=True)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()

    def _mfu(self, tokens_per_s: float, flops_per_s: float):
        """(TFLOP/s per GPU, MFU) by the full-row formula, then by the FLOPs actually computed."""
        if not torch.cuda.is_available():
            return None
        from megatron_autoalign.models.flops import peak_tflops, training_flops_per_token

        flops = training_flops_per_token(self.hf_cfg, self.cfg.data.seq_length) * self.task.flops_multiplier()
        tflops = tokens_per_s * flops / dist.get_world_size() / 1e12
        actual = flops_per_s / dist.get_world_size() / 1e12
        peak = self.cfg.logging.peak_tflops or peak_tflops(torch.cuda.get_device_name())
        return tflops, (tflops / peak if peak else float("nan")), actual, (actual / peak if peak else float("nan"))
