"""THE training loop, shared by every task (SFT, DPO): see ``task.py`` for what a task provides.

Per step: collate this DP rank's micro-batches on CPU -> one non_blocking copy to the device -> megatron's
forward/backward schedule (1F1B, interleaved with virtual PP) with per-token loss normalisation ->
NaN/inf check on the global grad norm -> clip -> optimizer step -> LR schedule -> log / eval / save.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from megatron_autoalign.checkpoint import load_megatron_checkpoint_weights
from megatron_autoalign.runtime import device, init_distributed, is_last_rank, print_rank_0
from megatron_autoalign.runtime.wgrad_fusion import enable_gradient_accumulation_fusion

from . import arguments
from .data_order import SampleOrder, microbatch_indices
from .deferred import DeferredScalars
from .task import Task, TaskContext

EXIT_CONFIG_ERROR = 2


class TrainingError(RuntimeError):
    """Training cannot continue (too many skipped steps...)."""


# ----------------------------------------------------------------------------- model / optimizer

def build_transformer_config(args, hf_cfg):
    from megatron_autoalign.models import pipeline_split, resolve_transformer_impl, transformer_config_from_hf

    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    vpp = args.virtual_pipeline_model_parallel_size
    overrides = dict(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        virtual_pipeline_model_parallel_size=vpp,
        calculate_per_token_loss=True,  # the task contract: loss sums / counts, normalised over the global batch
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method if args.recompute_granularity == "full" else None,
        recompute_num_layers=args.recompute_num_layers if args.recompute_granularity == "full" else None,
        attention_dropout=args.attention_dropout,
        hidden_dropout=args.hidden_dropout,
        # TE's fused RoPE; the local spec rotates q and k in its own attention (models/rope.py).
        apply_rope_fusion=resolve_transformer_impl(args.transformer_impl) == "transformer_engine",
        # Weight gradients go straight into DDP's fp32 main grads (apex's kernel or torch's addmm).
        gradient_accumulation_fusion=args.gradient_accumulation_fusion and enable_gradient_accumulation_fusion(),
    )
    if vpp is None:
        overrides.update(pipeline_split(hf_cfg["num_hidden_layers"], args.pipeline_model_parallel_size))
    return transformer_config_from_hf(hf_cfg, params_dtype=dtype, **overrides)


def build_model(args, hf_cfg, config):
    from megatron_autoalign.models import build_model_chunks, resolve_transformer_impl

    impl = resolve_transformer_impl(args.transformer_impl)
    chunks = build_model_chunks(hf_cfg, config, impl, recompute_activation=args.recompute_swiglu)
    dev = device()
    return [c.to(dev) for c in chunks]


def wrap_ddp(args, config, chunks):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=args.use_distributed_optimizer,
        # On GPUs the data-parallel gradient reduction runs bucket by bucket during the backward pass.
        overlap_grad_reduce=overlap_grad_reduce(args),
        # Updated parameters are all-gathered bucket by bucket from forward pre-hooks (megatron DDP).
        overlap_param_gather=args.overlap_param_gather,
        check_for_nan_in_grad=False,  # NaN steps are skipped, not fatal
    )
    # Like Megatron-LM: only the first chunk buckets, so later chunks' grads reduce in one go.
    return [DistributedDataParallel(config, ddp_config, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]


def overlap_grad_reduce(args) -> bool:
    return torch.cuda.is_available() and args.data_parallel_size > 1


def build_optimizer(args, ddp_chunks):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    cfg = OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=args.bf16, fp16=args.fp16,
        params_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32,
        loss_scale=args.loss_scale, use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_param_gather=args.overlap_param_gather,
    )
    from megatron_autoalign.runtime.optimizer_fallbacks import enable_fused_adam, use_foreach_multi_tensor_ops

    use_foreach_multi_tensor_ops()  # no-op when TE/apex provide these ops
    optimizer = get_megatron_optimizer(cfg, ddp_chunks)
    enable_fused_adam(optimizer)  # no-op on CPU or when TE/apex provide their fused Adam
    return optimizer


def wire_schedule_hooks(args, config, ddp_chunks, optimizer) -> None:
    """What megatron's forward/backward schedule calls back into: grad finalisation, loss scaling, and
    the DDP chunks' no-sync / grad-sync entry points."""
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [m.no_sync for m in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].no_sync
    if overlap_grad_reduce(args):
        # Interleaved PP starts each chunk's reduction as soon as its last micro-batch is done.
        config.grad_sync_func = (
            [m.start_grad_sync for m in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].start_grad_sync
        )


def build_scheduler(args, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup = args.lr_warmup_iters
    if args.lr_warmup_fraction is not None:
        warmup = int(args.lr_warmup_fraction * args.lr_decay_iters)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else args.lr, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=args.lr_decay_iters, lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=args.train_iters,
        wd_incr_style="constant",
    )


def optimizer_step(optimizer, clip_grad: float):
    """(stepped, grad_norm): megatron's step, split so that a NaN/inf grad norm skips the update."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    if optimizer.prepare_grads():  # fp16 overflow: the loss scaler already backed off
        return False, float("nan")
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return False, grad_norm
    if clip_grad > 0:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = opt.get_parameters()
            if params:
                clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm)
    return optimizer.step_with_ready_grads(), grad_norm


# ----------------------------------------------------------------------------- batches and schedule

def to_device(batch: dict, dev) -> dict:
    """Copy a collated batch's tensors to ``dev``. To a GPU they go through pinned host memory, so the
    copies queue behind the GPU's current work instead of making the host wait for it."""
    pin = torch.device(dev).type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


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
    def __init__(self, task_cls, argv=None):
        parser = arguments.build_parser(task_cls)
        args = parser.parse_args(argv)
        arguments.finalize(args, int(os.environ.get("WORLD_SIZE", "1")))
        from megatron_autoalign.models import check_model_size, check_tensor_parallel, load_hf_config

        hf_cfg = load_hf_config(args.hf_config)
        check_model_size(args.model_size, hf_cfg)
        check_tensor_parallel(hf_cfg, args.tensor_model_parallel_size)
        args.virtual_pipeline_model_parallel_size = None
        if args.num_layers_per_virtual_pipeline_stage:
            per = args.pipeline_model_parallel_size * args.num_layers_per_virtual_pipeline_stage
            if hf_cfg["num_hidden_layers"] % per:
                raise arguments.ArgumentError(
                    f"{hf_cfg['num_hidden_layers']} layers do not split into PP {args.pipeline_model_parallel_size} x "
                    f"{args.num_layers_per_virtual_pipeline_stage} layers per virtual stage")
            args.virtual_pipeline_model_parallel_size = hf_cfg["num_hidden_layers"] // per
        init_distributed(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                         args.context_parallel_size, args.virtual_pipeline_model_parallel_size, args.seed)
        self.args, self.hf_cfg = args, hf_cfg
        self.task = task_cls(args)
        self.ctx = TaskContext(args=args, hf_config=hf_cfg)
        self.train_ds, self.valid_ds = self.task.build_datasets(self.ctx)
        self.task.check(self.ctx)
        self._derive_iterations()

        self.config = build_transformer_config(args, hf_cfg)
        self.chunks = build_model(args, hf_cfg, self.config)
        self.model = wrap_ddp(args, self.config, self.chunks)
        self.optimizer = build_optimizer(args, self.model)
        self.scheduler = build_scheduler(args, self.optimizer)
        wire_schedule_hooks(args, self.config, self.model, self.optimizer)
        self.state = {"consumed_samples": 0, "skipped_steps": 0}
        self.iteration = 0
        self._load()
        if self.task.needs_reference_model:
            self.ctx.reference_model = self._build_reference()
        seq_length, mbs = self.task.pipeline_shape()
        self.runner = Runner(self.task, seq_length, mbs)
        self.ctx.forward_only = lambda chunks, batches, fs=None: self.runner.run(chunks, batches, True, fs) if batches else []
        self.order = SampleOrder(len(self.train_ds), args.seed, args.shuffle)
        from megatron.core import parallel_state as ps

        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self.dp_cp_group = ps.get_data_parallel_group(with_context_parallel=True)
        self.device = device()
        self._stop = False
        self._pending_log = None  # (DeferredScalars, host values) of a log point not printed yet
        # The SIGTERM flag is agreed on over a CPU group: a GPU all-reduce read back with .item() every
        # step would make the host wait for the optimizer update before it launches the next forward.
        self._stop_group = dist.new_group(backend="gloo") if dist.get_world_size() > 1 else None
        self.writer = None
        if args.tensorboard_dir and is_last_rank():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(args.tensorboard_dir)

    def _derive_iterations(self):
        a = self.args
        if a.train_iters is None:
            a.train_iters = max(1, a.epochs * len(self.train_ds) // a.global_batch_size)
            print_rank_0(f"train-iters {a.train_iters} = {a.epochs} epoch(s) x {len(self.train_ds)} samples / global batch {a.global_batch_size}")
        if a.lr_decay_iters is None:
            a.lr_decay_iters = a.train_iters
        if a.lr_warmup_fraction is None and a.lr_warmup_iters >= a.lr_decay_iters > 0 and a.lr_decay_style != "constant":
            raise arguments.ArgumentError(f"--lr-warmup-iters {a.lr_warmup_iters} must be smaller than the decay iterations {a.lr_decay_iters}")

    def _load(self):
        from .checkpointing import has_resumable_checkpoint, load_checkpoint

        a = self.args
        if has_resumable_checkpoint(a.load):
            state = load_checkpoint(a.load, self.model, self.optimizer, self.scheduler, a)
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
        a = self.args
        src = getattr(a, "ref_load", None) or a.pretrained_checkpoint
        if not src:
            raise arguments.ArgumentError(f"task {self.task.name} needs a reference model: pass --pretrained-checkpoint")
        config = copy.copy(self.config)
        config.finalize_model_grads_func = config.grad_scale_func = config.no_sync_func = None
        ref = build_model(a, self.hf_cfg, config)
        load_megatron_checkpoint_weights(ref, src)
        for c in ref:
            c.eval()
            c.requires_grad_(False)
        return ref

    # -- data
    def _batches(self, dataset, global_indices: list[int]) -> list[dict]:
        mbs = self.args.micro_batch_size
        groups = microbatch_indices(global_indices, mbs, self.dp_size, self.dp_rank)
        return [to_device(self.task.collate([dataset[i] for i in g]), self.device) for g in groups]

    # -- main
    def train(self):
        try:
            self._train()
        except BaseException:
            try:  # best effort: print the last logged step too; the original error is the one that matters
                self._flush_log()
            except Exception:
                pass
            raise
        finally:
            gc.unfreeze()  # _train froze the set-up objects; a later run in this process starts clean
        self._flush_log()

    def _train(self):
        a = self.args
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        # The model, optimizer and compiled kernels are hundreds of thousands of long-lived Python objects.
        # Frozen, they are no longer traversed by every full garbage collection, each of which would
        # otherwise stall one training step (the step is limited by the host).
        gc.collect()
        gc.freeze()
        gbs = a.global_batch_size
        acc, tokens, t0, interval_steps, last_gn = None, 0, time.time(), 0, float("nan")
        start_iteration = self.iteration
        for c in self.model:
            c.train()
        batches = None
        while self.iteration < a.train_iters:
            if batches is None:
                batches = self._batches(self.train_ds, self.order.indices(self.state["consumed_samples"], gbs))
            tokens += sum(b["num_tokens"] for b in batches)
            self.task.prepare_global_batch(batches, self.ctx)
            for m in self.model:
                m.zero_grad_buffer()
            self.optimizer.zero_grad()
            outputs = self.runner.run(self.model, batches, forward_only=False)
            # Collate the next step's micro-batches while the GPU still works through this step's backward
            # (the grad-norm check below waits for it); the sample order depends only on consumed samples.
            batches = None
            if self.iteration + 1 < a.train_iters:
                batches = self._batches(self.train_ds, self.order.indices(self.state["consumed_samples"] + gbs, gbs))
            stepped, grad_norm = optimizer_step(self.optimizer, a.clip_grad)
            self._flush_log()  # the grad-norm check waited for this step's backward: the last line's values are in
            self.iteration += 1
            self.state["consumed_samples"] += gbs
            if stepped:
                self.scheduler.step(increment=1)
            else:
                self.state["skipped_steps"] += 1
                print_rank_0(f"iteration {self.iteration}: non-finite grad norm ({grad_norm}); step skipped "
                             f"({self.state['skipped_steps']}/{a.max_skipped_steps})")
                if self.state["skipped_steps"] > a.max_skipped_steps:
                    raise TrainingError(f"{self.state['skipped_steps']} steps skipped for NaN/inf loss or grad norm (limit --max-skipped-steps {a.max_skipped_steps})")
            last_gn = grad_norm
            metrics = reduce_metrics(outputs, self.dp_cp_group)
            if metrics is not None:
                acc = metrics if acc is None else {k: acc[k] + metrics[k] for k in acc}
            interval_steps += 1
            if self.iteration % a.log_interval == 0 or self.iteration == a.train_iters:
                self._log(acc, last_gn, tokens, time.time() - t0, interval_steps)
                acc, tokens, t0, interval_steps = None, 0, time.time(), 0
            if a.eval_interval and self.valid_ds is not None and self.iteration % a.eval_interval == 0:
                self.evaluate()
            stop = self._should_stop(start_iteration)
            if a.save and (stop or self.iteration == a.train_iters
                           or (a.save_interval and self.iteration % a.save_interval == 0)):
                self.save()
            if stop:
                self._flush_log()
                print_rank_0(f"stopping at iteration {self.iteration} ({'SIGTERM' if self._stop else '--exit-interval'})")
                return
        if self.valid_ds is not None and not (a.eval_interval and self.iteration % a.eval_interval == 0):
            self.evaluate()  # final validation, unless the interval just ran it

    def _should_stop(self, start_iteration: int) -> bool:
        # Every rank must agree, or ranks would leave the collective schedule at different steps.
        if self._stop_group is not None:
            flag = torch.tensor([1 if self._stop else 0])
            dist.all_reduce(flag, group=self._stop_group)
            self._stop = bool(flag.item())
        a = self.args
        return self._stop or bool(a.exit_interval and self.iteration - start_iteration >= a.exit_interval
                                  and self.iteration < a.train_iters)

    def save(self):
        from .checkpointing import save_checkpoint

        self._flush_log()
        a = self.args
        if a.overlap_param_gather:
            # The last update's all-gather waits for the next forward: finish it, or the checkpoint would
            # hold other ranks' parameter shards from before the update.
            for m in self.model:
                m.disable_forward_pre_hook(param_sync=True)
        path = save_checkpoint(a.save, self.iteration, self.model, self.optimizer, self.scheduler,
                               self.state, a, with_optim=not a.no_save_optim)
        if a.overlap_param_gather:
            for m in self.model:
                m.enable_forward_pre_hook()
        print_rank_0(f"saved checkpoint {path}")

    def evaluate(self) -> float | None:
        self._flush_log()
        a = self.args
        n = len(self.valid_ds)
        steps = min(a.eval_iters, max(1, n // a.global_batch_size))
        for c in self.model:
            c.eval()
        acc = None
        with torch.no_grad():
            for s in range(steps):
                idx = [(s * a.global_batch_size + k) % n for k in range(a.global_batch_size)]
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
        self._record({"iteration": self.iteration, **{f"valid/{k}": v for k, v in values.items()}})
        return values.get(self.task.primary_metric)

    def _log(self, acc, grad_norm, tokens, seconds, steps):
        """Queue this log point's line; ``_flush_log`` prints it once its GPU values have arrived, normally
        during the next step (reading them now would make the host wait for the optimizer update)."""
        from megatron.core import parallel_state as ps

        # tokens counted per DP replica: sum over DP (CP ranks saw the same samples).
        tok = torch.tensor([tokens], dtype=torch.float64, device=self.device)
        dist.all_reduce(tok, group=ps.get_data_parallel_group())
        if not is_last_rank():
            return
        self._flush_log()
        scalars = {"__tokens": tok, **{k: v[0] / v[1].clamp(min=1) for k, v in (acc or {}).items()}}
        self._pending_log = (DeferredScalars(scalars), {
            "iteration": self.iteration, "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds, "skipped_steps": self.state["skipped_steps"],
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None})

    def _flush_log(self):
        if self._pending_log is None:
            return
        deferred, known = self._pending_log
        self._pending_log = None
        a = self.args
        values = deferred.get()
        tps = values.pop("__tokens") / max(known["seconds"], 1e-9)
        grad_norm = known["grad_norm"]
        rec = {"iteration": known["iteration"], "loss": values.get(self.task.primary_metric), "grad_norm": grad_norm,
               "lr": known["lr"], "tokens_per_s": tps, "skipped_steps": known["skipped_steps"],
               **{k: v for k, v in values.items() if k != self.task.primary_metric}}
        line = (f"iteration {rec['iteration']}/{a.train_iters} | loss {rec['loss']:.6f} | grad norm {grad_norm:.4f} | "
                f"lr {rec['lr']:.3e} | tokens/s {tps:,.0f} | skipped {rec['skipped_steps']}")
        mfu = self._mfu(tps)
        if mfu is not None:
            rec["tflops_per_gpu"], rec["mfu"] = mfu
            rec["peak_memory_gb"] = known["peak_memory_gb"]
            line += f" | TFLOP/s/GPU {mfu[0]:.1f} | MFU {100 * mfu[1]:.1f}% | peak mem {rec['peak_memory_gb']:.1f} GB"
        for k, v in values.items():
            if k != self.task.primary_metric:
                line += f" | {k} {v:.4f}"
        print(line, flush=True)
        self._record(rec)

    def _mfu(self, tokens_per_s: float):
        if not torch.cuda.is_available():
            return None
        from megatron_autoalign.models.flops import peak_tflops, training_flops_per_token

        flops = training_flops_per_token(self.hf_cfg, self.args.seq_length) * self.task.flops_multiplier()
        tflops = tokens_per_s * flops / dist.get_world_size() / 1e12
        peak = self.args.peak_tflops or peak_tflops(torch.cuda.get_device_name())
        return tflops, (tflops / peak if peak else float("nan"))

    def _record(self, rec: dict):
        if self.writer is not None:
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.writer.add_scalar(k if "/" in k else f"train/{k}", v, rec["iteration"])
            self.writer.flush()
        if self.args.log_json:
            with open(self.args.log_json, "a") as f:
                f.write(json.dumps(rec) + "\n")


def main(task_cls, argv=None) -> int:
    """Entry point: one-line errors (exit 2) for bad configuration, data or checkpoints."""
    from megatron_autoalign.checkpoint import CheckpointError
    from megatron_autoalign.models import ConfigError

    try:
        trainer = Trainer(task_cls, argv)
        trainer.train()
    except (arguments.ArgumentError, ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        if os.environ.get("MA_DEBUG"):
            raise
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    except TrainingError as e:
        if is_last_rank():
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        from megatron_autoalign.runtime import destroy_distributed

        destroy_distributed()
    return 0
