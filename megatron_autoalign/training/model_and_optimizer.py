"""The model chunks, megatron's DDP wrapper, optimizer and LR schedule, built from the run config (``config.py``),
and the optimizer step. The training loop and the component benchmark (``bench/bench_model_step.py``) both
build through these functions, so the benchmark measures what training runs.
"""

from __future__ import annotations

import math

import torch

from megatron_autoalign.runtime import device
from megatron_autoalign.runtime.wgrad_fusion import enable_gradient_accumulation_fusion


def build_transformer_config(cfg, hf_cfg):
    """megatron-core's TransformerConfig for the model in ``hf_cfg`` run as ``cfg`` (a RunConfig) says."""
    from megatron.core.transformer.enums import AttnBackend

    from megatron_autoalign.models import pipeline_split, resolve_transformer_impl, transformer_config_from_hf

    p, m = cfg.parallel, cfg.model
    vpp = p.virtual_pipeline_model_parallel_size
    overrides = dict(
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        sequence_parallel=p.sequence_parallel,
        virtual_pipeline_model_parallel_size=vpp,
        calculate_per_token_loss=True,  # the task contract: loss sums / counts, normalised over the global batch
        recompute_granularity=m.recompute_granularity,
        recompute_method=m.recompute_method,  # set for --recompute-granularity full only (config.py)
        recompute_num_layers=m.recompute_num_layers,
        attention_dropout=m.attention_dropout,
        # TE's attention kernel (flash / fused / unfused): megatron sets NVTE_*_ATTN from it
        attention_backend=AttnBackend[m.attention_backend],
        hidden_dropout=m.hidden_dropout,
        # TE's fused RoPE; the local spec rotates q and k in its own attention (models/rope.py).
        apply_rope_fusion=resolve_transformer_impl(m.transformer_impl) == "transformer_engine",
        # Weight gradients go straight into DDP's fp32 main grads (apex's kernel or torch's addmm).
        gradient_accumulation_fusion=m.gradient_accumulation_fusion and enable_gradient_accumulation_fusion(),
    )
    if vpp is None:
        overrides.update(pipeline_split(hf_cfg["num_hidden_layers"], p.pipeline_model_parallel_size))
    return transformer_config_from_hf(hf_cfg, params_dtype=m.params_dtype, **overrides)


def build_model(cfg, hf_cfg, config):
    from megatron_autoalign.models import build_model_chunks, resolve_transformer_impl

    impl = resolve_transformer_impl(cfg.model.transformer_impl)
    chunks = build_model_chunks(hf_cfg, config, impl, recompute_activation=cfg.model.recompute_swiglu)
    dev = device()
    return [c.to(dev) for c in chunks]


def wrap_ddp(cfg, config, chunks):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        # On GPUs the data-parallel gradient reduction runs bucket by bucket during the backward pass.
        overlap_grad_reduce=overlap_grad_reduce(cfg),
        # Updated parameters are all-gathered bucket by bucket from forward pre-hooks (megatron DDP).
        overlap_param_gather=cfg.parallel.overlap_param_gather,
        check_for_nan_in_grad=False,  # NaN steps are skipped, not fatal
    )
    # Like Megatron-LM: only the first chunk buckets, so later chunks' grads reduce in one go.
    return [DistributedDataParallel(config, ddp_config, c, disable_bucketing=i > 0) for i, c in enumerate(chunks)]


def overlap_grad_reduce(cfg) -> bool:
    return torch.cuda.is_available() and cfg.parallel.data_parallel_size > 1


def build_optimizer(cfg, ddp_chunks):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o, m = cfg.optimizer, cfg.model
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=m.bf16, fp16=m.fp16, params_dtype=m.params_dtype,
        loss_scale=m.loss_scale, use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        overlap_param_gather=cfg.parallel.overlap_param_gather,
    )
    from megatron_autoalign.runtime.optimizer_fallbacks import enable_fused_adam, use_foreach_multi_tensor_ops

    use_foreach_multi_tensor_ops()  # no-op when TE/apex provide these ops
    optimizer = get_megatron_optimizer(optimizer_config, ddp_chunks)
    enable_fused_adam(optimizer)  # no-op on CPU or when TE/apex provide their fused Adam
    return optimizer


def wire_schedule_hooks(cfg, config, ddp_chunks, optimizer) -> None:
    """What megatron's forward/backward schedule calls back into: grad finalisation, loss scaling, and
    the DDP chunks' no-sync / grad-sync entry points."""
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [m.no_sync for m in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].no_sync
    if overlap_grad_reduce(cfg):
        # Interleaved PP starts each chunk's reduction as soon as its last micro-batch is done.
        config.grad_sync_func = (
            [m.start_grad_sync for m in ddp_chunks] if len(ddp_chunks) > 1 else ddp_chunks[0].start_grad_sync
        )


def build_scheduler(cfg, optimizer):
    """megatron's LR schedule; needs the config completed by the data (``config.for_data``)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    warmup = o.warmup_iters
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=o.lr_decay_iters, lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=cfg.training.train_iters,
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
