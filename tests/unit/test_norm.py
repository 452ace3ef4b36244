"""The local spec's RMSNorm against HF's Qwen2RMSNorm: fp32 output and gradients to 1e-6; bf16 output
within one bf16 unit in the last place (the fused op scales by the weight before rounding, HF after)."""

from types import SimpleNamespace

import torch
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from megatron_autoalign.models.norm import RMSNorm


def check_against_hf(device: str) -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        hf = Qwen2RMSNorm(96, eps=1e-6).to(device, dtype)
        hf.weight.data = torch.randn(96, device=device).to(dtype)
        ours = RMSNorm(SimpleNamespace(params_dtype=dtype, sequence_parallel=False), 96, eps=1e-6).to(device)
        ours.weight.data = hf.weight.data.clone()
        x = (torch.randn(300, 96, device=device) * 3).to(dtype)
        x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        want, got = hf(x_hf), ours(x_ours)
        assert got.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            upstream = torch.randn_like(want)
            (want * upstream).sum().backward()
            (got * upstream).sum().backward()
            torch.testing.assert_close(x_ours.grad, x_hf.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.weight.grad, hf.weight.grad, rtol=1e-5, atol=1e-4)
        else:
            ulp = want.float().abs() * 2.0**-7 + 1e-6
            assert ((got.float() - want.float()).abs() <= ulp).all()


def test_rms_norm_matches_hf_on_cpu():
    check_against_hf("cpu")
