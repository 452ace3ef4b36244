"""Output projection + cross-entropy without materialising the logits of the whole vocabulary.

For a 152k vocabulary at 8k tokens the logits are 2.5 GB in bf16 and 5 GB in fp32, and an unfused loss
walks over them many times. Here the tokens are processed in chunks: the forward keeps only each token's
log-sum-exp; the backward recomputes one chunk of logits at a time (one extra logits matmul) and turns it
into softmax - onehot in a single pass. On GPU the per-chunk arithmetic is compiled into one kernel each
way, and nothing in the loop waits for the host.

Vocabulary-parallel: each TP rank holds V/TP rows of the weight; the max, the sum of exponentials and the
target logit are combined over the TP group, as in megatron's vocab-parallel cross entropy.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..data.encoder import IGNORE_INDEX
from ..runtime.wgrad_fusion import accumulate_matmul, wgrad_placeholder
from .compiled import kernel


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits are reduced in fp32; fp32/fp64 stay as they are."""
    return torch.promote_types(dtype, torch.float32)


def _local_stats(logits, local_ids, owned):
    """Per token: local max, sum of exp relative to it, and the target logit (0 where not owned)."""
    x = logits.to(_accumulation_dtype(logits.dtype))
    local_max = x.max(dim=-1).values
    sum_exp = (x - local_max[:, None]).exp().sum(-1)
    target = torch.where(owned, x.gather(1, local_ids[:, None]).squeeze(1), 0.0)
    return local_max, sum_exp, target


def _softmax_minus_onehot(logits, lse, local_ids, owned, scale):
    """(softmax - onehot) * scale, in the logits' dtype."""
    x = logits.to(_accumulation_dtype(logits.dtype))
    probs = (x - lse[:, None]).exp()
    vocab = torch.arange(x.shape[1], device=x.device)
    onehot = ((vocab[None, :] == local_ids[:, None]) & owned[:, None]).to(x.dtype)
    return ((probs - onehot) * scale[:, None]).to(logits.dtype)


def _tp_size(group) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, vocab_start, tp_group, chunk_size, into_main_grad):
        acc = _accumulation_dtype(hidden.dtype)
        if hidden.shape[0] == 0:  # no token to score (e.g. a micro-batch without trained tokens)
            ctx.save_for_backward(hidden, weight)
            ctx.empty = True
            return hidden.new_zeros(0, dtype=acc)
        ctx.empty = False
        vocab_local = weight.shape[0]
        local_ids = labels - vocab_start
        owned = (local_ids >= 0) & (local_ids < vocab_local)
        local_ids = torch.where(owned, local_ids, 0)
        stats = kernel(_local_stats, hidden.is_cuda)

        chunks = [
            stats(hidden[s : s + chunk_size] @ weight.t(), local_ids[s : s + chunk_size], owned[s : s + chunk_size])
            for s in range(0, hidden.shape[0], chunk_size)
        ]
        local_max, sum_exp, target = (torch.cat(parts) for parts in zip(*chunks))
        if _tp_size(tp_group) > 1:
            global_max = local_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
            both = torch.stack([sum_exp * (local_max - global_max).exp(), target])
            dist.all_reduce(both, group=tp_group)
            sum_exp, target, local_max = both[0], both[1], global_max
        lse = local_max + sum_exp.log()
        losses = torch.where(labels == IGNORE_INDEX, 0.0, lse - target).to(acc)

        ctx.save_for_backward(hidden, weight, local_ids, owned, labels, lse)
        ctx.chunk_size = chunk_size
        ctx.into_main_grad = into_main_grad and hasattr(weight, "main_grad")
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        if ctx.empty:
            hidden, weight = ctx.saved_tensors
            return torch.zeros_like(hidden), torch.zeros_like(weight), None, None, None, None, None
        hidden, weight, local_ids, owned, labels, lse = ctx.saved_tensors
        acc = _accumulation_dtype(hidden.dtype)
        scale = torch.where(labels == IGNORE_INDEX, 0.0, grad_losses.to(acc))
        grad_of_logits = kernel(_softmax_minus_onehot, hidden.is_cuda)
        grad_hidden = torch.empty_like(hidden)
        if ctx.into_main_grad:  # gradient-accumulation fusion: no [V, h] temporary at the backward's peak
            grad_weight = weight.main_grad
        else:
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = s + ctx.chunk_size
            h = hidden[s:e]
            grad = grad_of_logits(h @ weight.t(), lse[s:e], local_ids[s:e], owned[s:e], scale[s:e])
            grad_hidden[s:e] = grad @ weight
            accumulate_matmul(grad_weight, grad.t(), h)
        if ctx.into_main_grad:
            grad_weight = wgrad_placeholder(weight, hidden.dtype)
        else:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    vocab_start: int = 0,
    tp_group=None,
    chunk_size: int = 2048,
    into_main_grad: bool = False,
) -> torch.Tensor:
    """Per-token cross-entropy of ``hidden @ weight.T`` against ``labels`` (-100: ignored, loss 0).

    hidden [T, h] (full sequence on every TP rank), weight [V_local, h], labels [T] -> losses [T]
    (fp32 for bf16/fp16 inputs). The gradient w.r.t. ``hidden`` is this rank's partial sum; callers
    all-reduce it over TP (megatron's ``copy_to_tensor_model_parallel_region`` / sequence-parallel gather
    do that in their backward).

    ``into_main_grad`` (megatron's gradient-accumulation fusion): when ``weight`` has a ``main_grad``
    (megatron DDP), the weight gradient is accumulated there directly, as megatron's fused linears do.
    """
    return _LinearCrossEntropy.apply(hidden, weight, labels, vocab_start, tp_group, chunk_size, into_main_grad)
