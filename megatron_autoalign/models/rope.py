"""Rotary position embedding (RoPE) as Qwen2 / HF transformers define it, applied to q and k together.

megatron-core's own RoPE without Transformer Engine is ~10 unfused kernels per tensor and, for packed
(thd) rows, reads the document lengths on the host in every layer (a GPU->CPU synchronisation per layer).
Here the tables are built once per micro-batch from each token's position in its document, and on GPU
the rotation of q and k is one compiled kernel forward and one backward, written in the input's layout.
"""

from __future__ import annotations

import torch

from .compiled import kernel


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos and sin, each ``[n, 1, 1, head_dim]`` in ``dtype``, for token positions ``positions`` [n].

    Same arithmetic as HF Qwen2RotaryEmbedding: fp32 frequencies, (freqs, freqs) concatenated, cast last.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rotate_query_key(q, k, v, q_cos, q_sin, k_cos, k_sin):
    """RoPE on q ``[s, b, h, d]`` and k ``[s', b, g, d]``; tables broadcast over batch and heads.

    ``v`` comes back as a contiguous copy: q, k and v are views of one fused QKV projection output, and
    attention saving the view of v would keep that whole buffer alive until the backward.
    """
    return _rotate(q, q_cos, q_sin), _rotate(k, k_cos, k_sin), v.contiguous()


def apply_rope(q, k, v, q_cos, q_sin, k_cos, k_sin):
    """``rotate_query_key``, compiled into one kernel each way on GPU, eager on CPU."""
    return kernel(rotate_query_key, q.is_cuda)(q, k, v, q_cos, q_sin, k_cos, k_sin)
