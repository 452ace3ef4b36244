"""The SwiGLU MLP of the local spec, optionally without keeping the activation output for the backward.

megatron-core's MLP keeps two large tensors per layer until the backward: fc1's output [s, b, 2*ffn]
(the SwiGLU input, which the SwiGLU backward needs) and the SwiGLU output [s, b, ffn] (fc2's input, for
fc2's weight gradient). The second is cheap to recompute from the first. With ``recompute_activation``
its storage is released right after fc2's forward and refilled, one elementwise pass, by a hook that
runs when the gradient of fc2's output is ready, i.e. just before fc2's backward. For Qwen2.5-1.5B at
8k tokens that is 147 MB per layer, 4.1 GB over 28 layers.

megatron-core's ``CheckpointWithoutOutput`` does the same but also saves and restores every RNG state
and runs a nested autograd backward per layer; SwiGLU draws no random numbers and its own backward
already needs only fc1's output, so the hook here only recomputes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP


def swiglu(x: torch.Tensor) -> torch.Tensor:
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


def _release(t: torch.Tensor) -> None:
    t.untyped_storage().resize_(0)


def _refill(t: torch.Tensor, value: torch.Tensor) -> None:
    """Put ``value`` back into ``t``'s released storage. Copying storages (not ``t.copy_``) leaves ``t``'s
    version counter alone, so the autograd nodes that saved ``t`` accept it as unmodified."""
    storage = t.untyped_storage()
    storage.resize_(value.untyped_storage().nbytes())
    storage.copy_(value.untyped_storage())


class Qwen2MLP(MLP):
    def __init__(self, *args, recompute_activation: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.recompute_activation = recompute_activation
        assert self.config.gated_linear_unit and self.config.activation_func is F.silu, "Qwen2 MLP is SwiGLU"

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.bias_activation_fusion:
            from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

            return bias_swiglu_impl(x, None)
        return swiglu(x)

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if not (self.recompute_activation and torch.is_grad_enabled()) or per_token_scale is not None:
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        intermediate, fc1_bias = self.linear_fc1(hidden_states)
        assert fc1_bias is None, "Qwen2 MLP projections have no bias"
        # Both SwiGLU autograd paths (megatron's fused function, or silu * up) save fc1's output and
        # never the activation itself, so only fc2 holds on to the activation.
        activation = self._activation(intermediate)
        output, output_bias = self.linear_fc2(activation)
        if not output.requires_grad:
            return output, output_bias
        _release(activation)
        source = intermediate.detach()

        def recompute(grad):
            with torch.no_grad():
                _refill(activation, self._activation(source))
            return grad

        output.register_hook(recompute)
        return output, output_bias
