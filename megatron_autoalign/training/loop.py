"""THE training loop, shared by every task (SFT, DPO): see ``task.py`` for what a task provides.

Per step: collate this DP rank's micro-batches on CPU -> one non_blocking copy to the device -> megatron's
forward/backward schedule (1F1B, interleaved with virtual PP) with per-token loss normalisation ->
NaN/inf check on the global grad norm -> clip -> optimizer step -> LR schedule -> log / eval / save.
"""

from __future__ import annotations

import copy
import gc
import sys

import torch
import torch.distributed as dist

from megatron_autoalign.checkpoint import load_megatron_checkpoint_weights
from megatron_autoalign.models.flops import batch_training_flops
from megatron_autoalign.runtime import device, is_last_rank, print_rank_0
from megatron_autoalign.runtime.pipe_safe import protect_stdio
from megatron_autoalign.runtime.transfer import to_device_async

from .arguments import ArgumentError
from .config import for_data
from .data_order import SampleOrder, microbatch_indices
from .model_and_optimizer import (
    build_model, build_optimizer, build_scheduler, build_transformer_config, optimizer_step, wire_schedule_hooks,
    wrap_ddp,
)
from .preemption import EXIT_STOPPED, StopSignals, report_exit_code, saving
from .resume_checks import manifest_sha256
from .run_lock import LockError, RunLock
from .startup import parse_and_start, print_warnings, run_entry_point
from .step_log import StepLogger
from .task import Task, TaskContext


class TrainingError(RuntimeError):
    """Training cannot continue (too many skipped steps...)."""


# ----------------------------------------------------------------------------- batches and schedule

def to_device(batch: dict, dev) -> dict:
    """Copy a collated batch's tensors to ``dev`` without making the host wait for the GPU."""
    return {k: to_device_async(v, dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Runner:
    """Runs megatron's schedule over a list of device micro-batches and reduces the task's metrics."""

    def __init__(self, task: Task, seq_length: int, micro_batch_size: int):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        self.task = task
        self.seq_length, self.mbs = seq_length, micro_batch_size
        self.fb = get_forward_backward_func()

    def run(self, chunks, batches: list, forward_only: bool, forward_step=None):
        step = forward_step or self.task.forward_step

        def forward_step_func(data_iterator, model):
            return step(next(data_iterator), model)

        iters = [iter(batches) for _ in chunks] if len(chunks) > 1 else iter(batches)
        return self.fb(
            forward_step_func=forward_step_func, data_iterator=iters, model=chunks,
            num_microbatches=len(batches), seq_length=self.seq_length, micro_batch_size=self.mbs,
            forward_only=forward_only,
        )


def reduce_metrics(outputs, group) -> dict[str, torch.Tensor] | None:
    """Sum each metric's [sum, count] over micro-batches and ``group`` (last pipeline stage only)."""
    from megatron.core import parallel_state

    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    names = sorted(outputs[0]) if outputs else []
    if not names:
        return {}
    stacked = torch.stack([torch.stack([o[n] for o in outputs]).sum(0) for n in names])  # [metrics, 2]
    dist.all_reduce(stacked, group=group)
    return {n: stacked[i] for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, task_cls, argv=None, stop_signals: StopSignals | None = None):
        # main() installs the handlers before anything else, so that a signal during set-up is kept too
        self.stop_signals = stop_signals or StopSignals()
        cfg, hf_cfg = parse_and_start(task_cls, argv)
        self.hf_cfg = hf_cfg
        self._stop_group = dist.new_group(backend="gloo") if dist.get_world_size() > 1 else None
        self.lock = self._lock_save_dir(cfg.checkpoint.save)  # before anything slow: a second run fails at once
        self.task = task_cls(cfg)
        self.ctx = TaskContext(cfg=cfg, hf_config=hf_cfg)
        self.train_ds, self.valid_ds = self.task.build_datasets(self.ctx)
        # The rest of the run sees the config completed by the data (sequence length, iterations).
        self.cfg = self.ctx.cfg = for_data(cfg, self.ctx.manifest, len(self.train_ds), self.valid_ds is not None)
        if cfg.training.train_iters is None:
            t = self.cfg.training
            print_rank_0(f"train-iters {t.train_iters} = {t.epochs} epoch(s) x {len(self.train_ds)} samples / "
                         f"global batch {t.global_batch_size}")
        print_warnings(self.cfg, already=cfg)
        self.task.check(self.ctx)
        cfg = self.cfg

        self.config = build_transformer_config(cfg, hf_cfg)
        self.chunks = build_model(cfg, hf_cfg, self.config)
        self.model = wrap_ddp(cfg, self.config, self.chunks)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        wire_schedule_hooks(cfg, self.config, self.model, self.optimizer)
        # the data's identity goes into every checkpoint: a resume on other data is refused (resume_checks.py)
        self.state = {"consumed_samples": 0, "skipped_steps": 0, "data_manifest_sha256": manifest_sha256(self.ctx.manifest)}
        self.iteration = 0
        self._load()
        if self.task.needs_reference_model:
            self.ctx.reference_model = self._build_reference()
        seq_length, mbs = self.task.pipeline_shape()
        self.runner = Runner(self.task, seq_length, mbs)
        self.ctx.forward_only = lambda chunks, batches, fs=None: self.runner.run(chunks, batches, True, fs) if batches else []
        self.order = SampleOrder(len(self.train_ds), cfg.training.seed, cfg.data.shuffle)
        from megatron.core import parallel_state as ps

        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.dp_cp_group = ps.get_data_parallel_group(with_context_parallel=True)
        self.device = device()
        self.stopped_by = None  # the stop signal's name once every rank agreed to stop for it
        self.log = StepLogger(cfg, hf_cfg, self.task)
        self.start_iteration, self.last_checkpoint = self.iteration, None

    def _lock_save_dir(self, save: str | None) -> RunLock | None:
        """Rank 0 takes --save's lock (run_lock.py); every rank fails with its one line when another run holds it."""
        if not save:
            return None
        lock, outcome = (RunLock(save), [None]) if dist.get_rank() == 0 else (None, [None])
        if lock is not None:
            try:
                note = lock.acquire()
                if note:
                    print(f"note: {note}", flush=True)
            except LockError as e:
                outcome = [str(e)]
        if self._stop_group is not None:
            dist.broadcast_object_list(outcome, src=0, group=self._stop_group)
        if outcome[0]:
            raise LockError(outcome[0])
        return lock

    def _load(self):
        from .checkpointing import has_resumable_checkpoint, load_checkpoint

        a = self.cfg.checkpoint
        if has_resumable_checkpoint(a.load):
            state = load_checkpoint(a.load, self.model, self.optimizer, self.scheduler, a,
                                    data_hash=self.state["data_manifest_sha256"], data_path=self.cfg.data.data_path)
            if state is not None:
                self.iteration = int(state["iteration"])
                self.state.update({k: state[k] for k in ("consumed_samples", "skipped_steps") if k in state})
                print_rank_0(f"resumed from {a.load} at iteration {self.iteration} ({self.state['consumed_samples']} samples consumed)")
                return
            print_rank_0(f"loaded weights from {a.load} (release / --finetune)")
        elif a.pretrained_checkpoint:
            fmt = load_megatron_checkpoint_weights(self.chunks, a.pretrained_checkpoint)
            print_rank_0(f"loaded pretrained weights from {a.pretrained_checkpoint} ({fmt})")
        else:
            print_rank_0("warning: no --pretrained-checkpoint or --load: training from random initialisation")
        # Optimizers with fp32 main params copied the model at construction: refresh them from the loaded weights.
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            if hasattr(opt, "reload_model_params"):
                opt.reload_model_params()

    def _build_reference(self):
        src = self.task.reference_checkpoint()
        if not src:
            raise ArgumentError(f"task {self.task.name} needs a reference model: pass --pretrained-checkpoint")
        config = copy.copy(self.config)
        config.finalize_model_grads_func = config.grad_scale_func = config.no_sync_func = None
        ref = build_model(self.cfg, self.hf_cfg, config)
        load_megatron_checkpoint_weights(ref, src)
        for c in ref:
            c.eval()
            c.requires_grad_(False)
        return ref

    # -- data
    def _batches(self, dataset, global_indices: list[int]) -> list[dict]:
        mbs = self.cfg.training.micro_batch_size
        groups = microbatch_indices(global_indices, mbs, self.dp_size, self.dp_rank)
        return [to_device(self.task.collate([dataset[i] for i in g]), self.device) for g in groups]

    # -- main
    def train(self) -> str | None:
        """Train to --train-iters; returns the name of the signal that stopped the run early, or None."""
        try:
            self._train()
        except BaseException:
            try:  # best effort: print the last logged step too; the original error is the one that matters
                self.log.flush()
                self.log.close()
            except Exception:
                pass
            raise
        finally:
            gc.unfreeze()  # _train froze the set-up objects; a later run in this process starts clean
            if self.lock is not None:
                self.lock.release()
        self.log.flush()
        self.log.summary(self.iteration, self.start_iteration, self.last_checkpoint)
        self.log.close()
        return self.stopped_by

    def _train(self):
        a, t = self.cfg, self.cfg.training
        # The model, optimizer and compiled kernels are hundreds of thousands of long-lived Python objects.
        # Frozen, they are no longer traversed by every full garbage collection, each of which would
        # otherwise stall one training step (the step is limited by the host).
        gc.collect()
        gc.freeze()
        gbs = t.global_batch_size
        acc, tokens, flops, last_gn = None, 0, 0.0, float("nan")
        start_iteration = self.start_iteration = self.iteration
        for c in self.model:
            c.train()
        batches = None
        if self.iteration < t.train_iters and self._should_stop(start_iteration):  # a signal during set-up
            print_rank_0(f"stopping before the first step ({self.stopped_by}): nothing to save, the resume "
                         f"point stays at iteration {self.iteration}")
            return
        while self.iteration < t.train_iters:
            if batches is None:
                batches = self._batches(self.train_ds, self.order.indices(self.state["consumed_samples"], gbs))
            tokens += sum(b["num_tokens"] for b in batches)
            # the FLOPs this step computes (per-document attention, projection of trained tokens only)
            flops += self.task.flops_multiplier() * sum(batch_training_flops(self.hf_cfg, b) for b in batches)
            self.task.prepare_global_batch(batches, self.ctx)
            for m in self.model:
                m.zero_grad_buffer()
            self.optimizer.zero_grad()
            outputs = self.runner.run(self.model, batches, forward_only=False)
            # Collate the next step's micro-batches while the GPU still works through this step's backward
            # (the grad-norm check below waits for it); the sample order depends only on consumed samples.
            batches = None
            if self.iteration + 1 < t.train_iters:
                batches = self._batches(self.train_ds, self.order.indices(self.state["consumed_samples"] + gbs, gbs))
            stepped, grad_norm = optimizer_step(self.optimizer, a.optimizer.clip_grad)
            self.log.flush()  # the grad-norm check waited for this step's backward: the last line's values are in
            self.log.step_done(grad_norm, stepped)
            self.iteration += 1
            self.state["consumed_samples"] += gbs
            if stepped:
                self.scheduler.step(increment=1)
            else:
                self.state["skipped_steps"] += 1
                print_rank_0(f"iteration {self.iteration}: non-finite grad norm ({grad_norm}); step skipped "
                             f"({self.state['skipped_steps']}/{t.max_skipped_steps})")
                if self.state["skipped_steps"] > t.max_skipped_steps:
                    raise TrainingError(f"{self.state['skipped_steps']} steps skipped for NaN/inf loss or grad norm (limit --max-skipped-steps {t.max_skipped_steps})")
            last_gn = grad_norm
            metrics = reduce_metrics(outputs, self.dp_cp_group)
            if metrics is not None:
                acc = metrics if acc is None else {k: acc[k] + metrics[k] for k in acc}
            if self.iteration % a.logging.log_interval == 0 or self.iteration == t.train_iters:
                self.log.queue(self.iteration, acc, last_gn, self.optimizer.param_groups[0]["lr"], tokens,
                               self.state["consumed_samples"], self.state["skipped_steps"], self.device, flops)
                acc, tokens, flops = None, 0, 0.0
            if t.eval_interval and self.valid_ds is not None and self.iteration % t.eval_interval == 0:
                with self.log.paused("validation"):
                    self.evaluate()
            stop = self._should_stop(start_iteration)
            if a.checkpoint.save and (stop or self.iteration == t.train_iters
                           or (a.checkpoint.save_interval and self.iteration % a.checkpoint.save_interval == 0)):
                with self.log.paused("checkpoint"):
                    self.save()
                # a signal that arrived during the save: that checkpoint is the one to stop at
                stop = stop or self._should_stop(start_iteration)
            if stop and self.iteration < t.train_iters:
                self.log.flush()
                saved = f"checkpoint {a.checkpoint.save}" if a.checkpoint.save else "nothing saved (no --save)"
                print_rank_0(f"stopping at iteration {self.iteration} ({self.stopped_by or '--exit-interval'}); {saved}")
                return
        if self.stopped_by:  # a signal at the very end: the run is complete all the same, exit quickly
            print_rank_0(f"{self.stopped_by} after the last iteration: skipping the final validation")
            self.stopped_by = None
        elif self.valid_ds is not None and not (t.eval_interval and self.iteration % t.eval_interval == 0):
            with self.log.paused("validation"):
                self.evaluate()  # final validation, unless the interval just ran it

    def _should_stop(self, start_iteration: int) -> bool:
        if self.lock is not None:
            self.lock.refresh()
        # Every rank must agree, or ranks would leave the collective schedule at different steps.
        self.stopped_by = self.stop_signals.agree(self._stop_group)
        t = self.cfg.training
        return bool(self.stopped_by) or bool(t.exit_interval and self.iteration - start_iteration >= t.exit_interval
                                             and self.iteration < t.train_iters)

    def save(self):
        from .checkpointing import save_checkpoint

        self.log.flush()
        a = self.cfg
        if a.parallel.overlap_param_gather:
            # The last update's all-gather waits for the next forward: finish it, or the checkpoint would
            # hold other ranks' parameter shards from before the update.
            for m in self.model:
                m.disable_forward_pre_hook(param_sync=True)
        with saving():
            path = save_checkpoint(a.checkpoint.save, self.iteration, self.model, self.optimizer, self.scheduler,
                                   self.state, a, with_optim=not a.checkpoint.no_save_optim)
        if a.parallel.overlap_param_gather:
            for m in self.model:
                m.enable_forward_pre_hook()
        self.last_checkpoint = path
        print_rank_0(f"saved checkpoint {path}")

    def evaluate(self) -> float | None:
        self.log.flush()
        t = self.cfg.training
        n = len(self.valid_ds)
        steps = min(t.eval_iters, max(1, n // t.global_batch_size))
        for c in self.model:
            c.eval()
        acc = None
        with torch.no_grad():
            for s in range(steps):
                idx = [(s * t.global_batch_size + k) % n for k in range(t.global_batch_size)]
                batches = self._batches(self.valid_ds, idx)
                self.task.prepare_global_batch(batches, self.ctx)
                m = reduce_metrics(self.runner.run(self.model, batches, forward_only=True), self.dp_cp_group)
                if m is not None:
                    acc = m if acc is None else {k: acc[k] + m[k] for k in acc}
        for c in self.model:
            c.train()
        if acc is None or not is_last_rank():
            return None
        values = {k: (v[0] / v[1].clamp(min=1)).item() for k, v in acc.items()}
        print(f"validation at iteration {self.iteration}: " + " | ".join(f"{k}: {v:.6f}" for k, v in values.items()), flush=True)
        self.log.record({"iteration": self.iteration, **{f"valid/{k}": v for k, v in values.items()}})
        return values.get(self.task.primary_metric)


def main(task_cls, argv=None) -> int:
    """Entry point: one-line errors (exit 2) for bad configuration, data or checkpoints; exit 1 when
    training cannot continue; EXIT_STOPPED (75) after a stop signal and its checkpoint (``preemption.py``);
    0 at --train-iters. The code also goes to $MA_EXIT_STATUS_FILE for the launch scripts."""

    def run():
        try:
            with StopSignals() as stop_signals:
                stopped_by = Trainer(task_cls, argv, stop_signals).train()
        except TrainingError as e:
            if is_last_rank():
                print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        return EXIT_STOPPED if stopped_by else 0

    protect_stdio()
    return report_exit_code(run_entry_point(run))
