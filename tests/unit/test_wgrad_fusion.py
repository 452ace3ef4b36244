"""Gradient-accumulation fusion pieces: the torch stand-in for apex's wgrad GEMM, the placeholder contract
with megatron DDP, and the linear cross-entropy writing its weight gradient into ``main_grad``."""

import pytest
import torch
import torch.nn.functional as F

from megatron_autoalign.models.linear_cross_entropy import linear_cross_entropy
from megatron_autoalign.runtime.wgrad_fusion import TorchWgradAccumulation, accumulate_matmul, wgrad_placeholder


def test_wgrad_gemm_accumulates_into_fp32_main_grad():
    torch.manual_seed(0)
    inp, grad_out = torch.randn(32, 6).bfloat16(), torch.randn(32, 4).bfloat16()
    main_grad = torch.randn(4, 6)
    expected = main_grad.double() + grad_out.double().t() @ inp.double()
    TorchWgradAccumulation.wgrad_gemm_accum_fp32(inp, grad_out, main_grad)
    assert main_grad.dtype == torch.float32
    torch.testing.assert_close(main_grad.double(), expected, rtol=1e-6, atol=1e-5)


def test_accumulate_matmul_same_dtype_is_in_place():
    out = torch.ones(3, 3, dtype=torch.float64)
    a, b = torch.eye(3, dtype=torch.float64), torch.full((3, 3), 2.0, dtype=torch.float64)
    ptr = out.data_ptr()
    accumulate_matmul(out, a, b)
    assert out.data_ptr() == ptr and torch.equal(out, torch.full((3, 3), 3.0, dtype=torch.float64))


def test_placeholder_follows_megatron_ddp_contract():
    w = torch.nn.Parameter(torch.randn(3, 2))
    assert wgrad_placeholder(w, torch.bfloat16) is None  # not wrapped in DDP: nothing to hand back
    w.grad_added_to_main_grad = False
    got = wgrad_placeholder(w, torch.bfloat16)
    assert w.grad_added_to_main_grad and got.shape == w.shape and got.dtype == torch.bfloat16
    w.zero_out_wgrad = True  # tied weight: autograd sums this with the other use's gradient
    assert torch.count_nonzero(wgrad_placeholder(w, torch.bfloat16)) == 0


@pytest.mark.parametrize("tied", [False, True])
def test_linear_cross_entropy_accumulates_weight_grad_into_main_grad(tied):
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(50, 8, dtype=torch.float64))
    labels = torch.randint(0, 50, (13,))
    labels[3] = -100
    previous = torch.randn(50, 8, dtype=torch.float64)  # an earlier micro-batch's gradient
    weight.main_grad, weight.grad_added_to_main_grad = previous.clone(), False
    if tied:
        weight.zero_out_wgrad = True

    linear_cross_entropy(hidden, weight, labels, chunk_size=5, into_main_grad=True).sum().backward()

    ref_weight = weight.detach().clone().requires_grad_(True)
    F.cross_entropy(hidden.detach() @ ref_weight.t(), labels, reduction="sum", ignore_index=-100).backward()
    torch.testing.assert_close(weight.main_grad, previous + ref_weight.grad, atol=1e-10, rtol=0)
    assert weight.grad_added_to_main_grad
    if tied:  # what DDP's hook then adds must not change main_grad
        assert torch.count_nonzero(weight.grad) == 0
