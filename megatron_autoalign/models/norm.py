"""RMSNorm for the local spec that works with sequence parallel.

megatron's torch-norm wrapper refuses sequence parallel. With SP each TP rank normalises its own
sequence slice, so the weight's gradient is partial: tagging the weight ``sequence_parallel`` makes
megatron-core's ``finalize_model_grads`` all-reduce it across the TP group.

On GPU the arithmetic is compiled into one kernel forward and one backward (unfused it is ~8 kernels
over the activations); on CPU it runs eagerly.
"""

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from .compiled import kernel


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same arithmetic as HF Qwen2RMSNorm: normalise in fp32, cast back, then scale.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernel(rms_norm, x.is_cuda)(x, self.weight, self.eps)
