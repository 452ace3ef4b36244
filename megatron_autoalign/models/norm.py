"""RMSNorm for the local spec that works with sequence parallel.

megatron's torch-norm wrapper refuses sequence parallel. With SP each TP rank normalises its own
sequence slice, so the weight's gradient is partial: tagging the weight ``sequence_parallel`` makes
megatron-core's ``finalize_model_grads`` all-reduce it across the TP group.

The arithmetic is torch's ``F.rms_norm``: on CUDA one fused kernel forward and one backward, launched as
plain operators. A compiled region does the same GPU work but costs the host ~3x as much per call
(``bench/bench_host_overhead.py``), and the 1.5B training step is limited by the host. It normalises in
fp32 like HF's Qwen2RMSNorm; HF rounds to the input dtype before scaling by the weight, the fused kernel
after, so bf16 outputs can differ by one unit in the last place (fp32: identical up to rounding order).
"""

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class HeadRMSNorm(RMSNorm):
    """Qwen3's q/k norm: one ``[head_dim]`` weight shared by every head, applied to each head's vector.

    Its input is split over heads (TP), never over the sequence, so the weight is not tagged for sequence
    parallel. Each TP rank's gradient covers only its own heads: megatron-core's ``finalize_model_grads``
    sums the gradients of ``q_layernorm`` / ``k_layernorm`` parameters over TP when ``config.qk_layernorm``
    is set (as every family with this norm sets it).
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__(config, hidden_size, eps)
        setattr(self.weight, "sequence_parallel", False)
