"""On GPU: gradient-accumulation fusion (weight gradients added to megatron DDP's fp32 main grads by
torch's mixed-dtype addmm, or apex when present) gives the gradients of the unfused path.

Two micro-batches are accumulated, through a tied-embedding model (the linear cross-entropy and the
embedding share one weight). fp32 params: every main grad equal to 1e-5 relative; bf16 params: within
1e-2 relative (the unfused path rounds each micro-batch's weight gradient to bf16, the fused one does
not). The fused runs must really have taken the fused path (DDP's ``grad_added_to_main_grad`` flags).
"""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _main_grads(hf_dir, dtype, fused: bool) -> dict:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.runtime import init_distributed
    from megatron_autoalign.runtime.wgrad_fusion import enable_gradient_accumulation_fusion

    init_distributed(1, 1)
    cfg = load_hf_config(hf_dir)
    tconfig = transformer_config_from_hf(
        cfg, dtype, gradient_accumulation_fusion=fused and enable_gradient_accumulation_fusion())
    torch.manual_seed(0)
    model = DistributedDataParallel(
        tconfig, DistributedDataParallelConfig(grad_reduce_in_fp32=True),
        build_gpt_model(cfg, tconfig).cuda())
    model.zero_grad_buffer()
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(2):
        tokens = torch.randint(0, 151000, (2, 65), device="cuda", generator=gen)
        positions = torch.arange(64, device="cuda").expand(2, 64)
        model(tokens[:, :-1], positions, None, labels=tokens[:, 1:]).float().mean().backward()
    fused_params = sum(bool(getattr(p, "grad_added_to_main_grad", False)) for p in model.module.parameters())
    return {n: p.main_grad.detach().clone() for n, p in model.module.named_parameters()}, fused_params


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_fused_weight_grad_accumulation_matches_unfused(tiny_tied_dir):
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        (fused, n_fused), (plain, n_plain) = (_main_grads(tiny_tied_dir, dtype, f) for f in (True, False))
        # every linear weight and the tied embedding / output weight; norms and biases stay unfused
        assert n_fused >= 4 * 2 + 1 and n_plain == 0, (n_fused, n_plain)
        assert fused.keys() == plain.keys()
        for name in plain:
            assert _rel(fused[name], plain[name]) < tol, (dtype, name, _rel(fused[name], plain[name]))
