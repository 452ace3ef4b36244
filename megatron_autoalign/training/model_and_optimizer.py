"""The model chunks, megatron's DDP wrapper, optimizer and LR schedule, built from the training arguments,
and the optimizer step. The training loop and the component benchmark (``bench/bench_model_step.py``) both
build through these functions, so the benchmark measures what training runs.
"""

from __future__ import annotations

import math

import torch

from megatron_autoalign.runtime import device
from megatron_autoalign.runtime.wgrad_fusion import enable_gradient_accumulation_fusion


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
