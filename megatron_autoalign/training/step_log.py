"""The training log: one line per log point on stdout (last rank), the same record in ``--log-json`` and
TensorBoard (``--tensorboard-dir``).

A log point's GPU values (token count, the task's metrics) are read one step late through
``DeferredScalars``: ``queue`` starts their copy to the host and ``flush`` prints them. The loop flushes
right after the next step's grad-norm check, which has already waited for the GPU, and before anything
else it prints (validation, checkpoints, the end), so lines stay in order and the host never waits for
the optimizer update just to log.
"""

from __future__ import annotations

import json
import math

import torch
import torch.distributed as dist

from megatron_autoalign.runtime import is_last_rank
from megatron_autoalign.runtime.transfer import to_device_async

from .deferred import DeferredScalars

_TOKENS = "__tokens"  # the token count travels with the task's metrics under a name no metric uses
_FLOPS = "__flops"  # and so do the FLOPs computed (models/flops.py: computed_training_flops)


class StepLogger:
    def __init__(self, args, hf_cfg: dict, task):
        self.args, self.hf_cfg, self.task = args, hf_cfg, task
        self.pending = None  # (DeferredScalars, host-side values) of a log point not printed yet
        self.writer = None
        if args.tensorboard_dir and is_last_rank():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(args.tensorboard_dir)

    def queue(self, iteration: int, acc, grad_norm: float, lr: float, tokens: int, seconds: float,
              skipped_steps: int, device, flops: float = 0.0) -> None:
        """Log point: ``acc`` maps metric -> [sum, count] tensors (reduced over DP on the last rank);
        ``tokens`` this rank's tokens since the last log point, ``flops`` the FLOPs its micro-batches
        computed. Every rank must call this."""
        from megatron.core import parallel_state as ps

        # tokens and FLOPs counted per DP replica: sum over DP (CP ranks saw the same samples).
        tok = to_device_async(torch.tensor([tokens, flops], dtype=torch.float64), device)
        dist.all_reduce(tok, group=ps.get_data_parallel_group())
        if not is_last_rank():
            return
        self.flush()
        scalars = {_TOKENS: tok[0], _FLOPS: tok[1], **{k: v[0] / v[1].clamp(min=1) for k, v in (acc or {}).items()}}
        self.pending = (DeferredScalars(scalars), {
            "iteration": iteration, "grad_norm": grad_norm, "lr": lr, "seconds": seconds,
            "skipped_steps": skipped_steps,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None})

    def flush(self) -> None:
        """Print and record the queued log point, if any."""
        if self.pending is None:
            return
        deferred, known = self.pending
        self.pending = None
        values = deferred.get()
        tps = values.pop(_TOKENS) / max(known["seconds"], 1e-9)
        flops_per_s = values.pop(_FLOPS) / max(known["seconds"], 1e-9)
        primary = self.task.primary_metric
        rec = {"iteration": known["iteration"], "loss": values.get(primary), "grad_norm": known["grad_norm"],
               "lr": known["lr"], "tokens_per_s": tps, "skipped_steps": known["skipped_steps"],
               **{k: v for k, v in values.items() if k != primary}}
        line = (f"iteration {rec['iteration']}/{self.args.train_iters} | loss {rec['loss']:.6f} | "
                f"grad norm {rec['grad_norm']:.4f} | lr {rec['lr']:.3e} | tokens/s {tps:,.0f} | "
                f"skipped {rec['skipped_steps']}")
        mfu = self._mfu(tps, flops_per_s)
        if mfu is not None:
            rec["tflops_per_gpu"], rec["mfu"], rec["tflops_actual_per_gpu"], rec["mfu_actual"] = mfu
            rec["peak_memory_gb"] = known["peak_memory_gb"]
            line += (f" | TFLOP/s/GPU {mfu[2]:.1f} | MFU {100 * mfu[3]:.1f}% (full-row formula {100 * mfu[1]:.1f}%)"
                     f" | peak mem {rec['peak_memory_gb']:.1f} GB")
        for k, v in values.items():
            if k != primary:
                line += f" | {k} {v:.4f}"
        print(line, flush=True)
        self.record(rec)

    def record(self, rec: dict) -> None:
        """One record (training or validation) to TensorBoard and the JSON log."""
        if self.writer is not None:
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.writer.add_scalar(k if "/" in k else f"train/{k}", v, rec["iteration"])
            self.writer.flush()
        if self.args.log_json:
            with open(self.args.log_json, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _mfu(self, tokens_per_s: float, flops_per_s: float):
        """(TFLOP/s per GPU, MFU) by the full-row formula, then by the FLOPs actually computed."""
        if not torch.cuda.is_available():
            return None
        from megatron_autoalign.models.flops import peak_tflops, training_flops_per_token

        flops = training_flops_per_token(self.hf_cfg, self.args.seq_length) * self.task.flops_multiplier()
        tflops = tokens_per_s * flops / dist.get_world_size() / 1e12
        actual = flops_per_s / dist.get_world_size() / 1e12
        peak = self.args.peak_tflops or peak_tflops(torch.cuda.get_device_name())
        return tflops, (tflops / peak if peak else float("nan")), actual, (actual / peak if peak else float("nan"))
