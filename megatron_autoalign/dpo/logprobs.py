"""Per-sequence log-probabilities from megatron's per-token cross entropy, under TP, PP and CP.

The model is called with targets (``GPTModel(..., labels=...)``), so the output layer's vocab-parallel
logits go through ``tensor_parallel.vocab_parallel_cross_entropy`` (fp32 inside): log p(target) = -CE
without ever gathering the vocabulary. Only the last pipeline stage sees this output.

With context parallel each rank holds a slice of every sequence, so its sums are partial: they are
all-reduced over the CP group. The backward of that all-reduce is the identity: every CP rank computes
the same loss L(S) of the full sums S = sum_r s_r and sends dL/dS into its own s_r; the data-parallel
gradient reduction (DP x CP, summed) then adds the CP ranks' parts into the full gradient once.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _AllReduceSumIdentityGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def sequence_logps(per_token_ce: torch.Tensor, seq_ids: torch.Tensor, num_seqs: int, cp_group=None) -> torch.Tensor:
    """Sum of log p(target) over each sequence's trained tokens: [num_seqs] fp32.

    ``per_token_ce`` is megatron's per-token CE (same shape as ``seq_ids``); ``seq_ids`` gives each
    position's sequence slot, -1 where nothing is trained (prompt, padding, document ends)."""
    keep = seq_ids >= 0
    # where + clamp instead of boolean indexing: no device->host sync on GPU (ignored positions add 0 to slot 0)
    logp = torch.where(keep, -per_token_ce.float(), 0.0)
    sums = torch.zeros(num_seqs, dtype=torch.float32, device=per_token_ce.device)
    sums = sums.index_add(0, seq_ids.clamp(min=0).flatten(), logp.flatten())
    if cp_group is not None and dist.get_world_size(cp_group) > 1:
        sums = _AllReduceSumIdentityGrad.apply(sums, cp_group)
    return sums
