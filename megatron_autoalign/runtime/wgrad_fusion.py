"""Weight gradients accumulated straight into megatron's fp32 ``main_grad`` (gradient-accumulation fusion).

Without it, every linear layer's backward writes a bf16 weight gradient, autograd hands it to megatron
DDP's per-parameter hook, and the hook adds it to the fp32 ``main_grad`` buffer: an extra pass over
every gradient, a bf16 temporary per parameter and a Python hook doing work per parameter per
micro-batch. With ``TransformerConfig.gradient_accumulation_fusion`` megatron-core's linear layers
instead call ``wgrad_gemm_accum_fp32(input, grad_output, main_grad)``, which apex provides as a CUDA
extension (``fused_weight_gradient_mlp_cuda``). Without apex, torch can do the same with one
``addmm`` whose bf16 x bf16 product is accumulated into the fp32 output in place (``out_dtype``).

``enable_gradient_accumulation_fusion`` puts that torch version in megatron's slot only when apex's
extension is missing; it never replaces apex or Transformer Engine (TE's linears fuse on their own).
"""

from __future__ import annotations

import torch

_MIXED_ADDMM = True  # becomes False once torch says it has no mixed-dtype addmm (older versions)


def accumulate_matmul(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out += a @ b`` with ``out`` possibly wider than ``a``/``b`` (fp32 += bf16 @ bf16).

    On CUDA this is one GEMM accumulating in place; elsewhere (or on torch without mixed-dtype
    ``addmm``) the operands are widened first, so the product is never rounded to the narrow dtype.
    """
    global _MIXED_ADDMM
    if a.dtype == out.dtype:
        out.addmm_(a, b)
        return
    if out.is_cuda and _MIXED_ADDMM:
        try:
            torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
            return
        except (TypeError, RuntimeError):
            _MIXED_ADDMM = False
    out.addmm_(a.to(out.dtype), b.to(out.dtype))


class TorchWgradAccumulation:
    """apex ``fused_weight_gradient_mlp_cuda`` contract: ``main_grad += grad_output.T @ input`` (2-D)."""

    @staticmethod
    def wgrad_gemm_accum_fp32(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor):
        accumulate_matmul(main_grad, grad_output.t(), total_input)

    wgrad_gemm_accum_fp16 = wgrad_gemm_accum_fp32  # bf16/fp16 main grads: the same call


def enable_gradient_accumulation_fusion() -> bool:
    """Make megatron-core's linear layers able to fuse weight-gradient accumulation; True if they can.

    On CUDA: apex's extension if installed, otherwise ``TorchWgradAccumulation`` in its slot. On CPU:
    False (megatron's fused path allocates on the current CUDA device). The model must then be wrapped
    in megatron DDP, which gives every parameter its ``main_grad``.
    """
    if not torch.cuda.is_available():
        return False
    from megatron.core.tensor_parallel import layers

    from .patches import replace

    if not layers._grad_accum_fusion_available:  # registered in patches.py as wgrad-accumulation
        replace("wgrad-accumulation", layers, "fused_weight_gradient_mlp_cuda", TorchWgradAccumulation)
        replace("wgrad-accumulation", layers, "_grad_accum_fusion_available", True)
    return True


def wgrad_placeholder(weight: torch.Tensor, dtype: torch.dtype):
    """What a backward returns for ``weight`` after adding its gradient to ``weight.main_grad`` itself.

    Same contract as megatron-core's fused linear backward: DDP's hook skips the add for a parameter
    marked ``grad_added_to_main_grad``; a weight shared with another layer on the same stage
    (``zero_out_wgrad``, tied embeddings) gets zeros, because autograd sums both layers' gradients and
    the hook then adds that sum.
    """
    if not hasattr(weight, "grad_added_to_main_grad"):
        return None
    weight.grad_added_to_main_grad = True
    if getattr(weight, "zero_out_wgrad", False):
        return torch.zeros(weight.shape, dtype=dtype, device=weight.device)
    return torch.empty(weight.shape, dtype=dtype, device=weight.device)
