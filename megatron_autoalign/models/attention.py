"""Core attention for the local (non-Transformer-Engine) spec.

megatron-core's own ``DotProductAttention`` refuses packed sequences and context parallelism and builds
its mask on CUDA. This module fills those holes through the layer spec:

- RoPE: with ``rotary_base`` set (the builder's local spec sets it and builds the GPTModel without
  megatron's own RoPE), q and k are rotated here, from the same per-token document positions that define
  the mask (``rope.py``): one compiled kernel on GPU and no host synchronisation per layer;
- plain causal batches (``sbhd``, no CP): torch SDPA with ``is_causal`` (flash / cuDNN on GPU);
- packed documents (``thd``) and/or context parallel: every local query token and every (gathered) key
  token gets a (document id, position in document); a key is visible when it is in the same document and
  not later. On GPU this runs as FlexAttention with a block mask; on CPU as SDPA with an exact boolean
  mask, so the CPU tests check the same rule. Packed bf16/fp16 rows without CP take torch's
  flash-attention varlen kernel instead where torch has it (``torch.nn.attention.varlen``): the
  documents are exactly its ``cu_seqlens`` segments, and it is two plain operators per layer where
  FlexAttention is a compiled region each way (the step is limited by the host).

Context parallel follows megatron's load-balanced layout: each document (or the whole row) of padded
length L is cut into 2*CP chunks and CP rank r holds chunks r and 2*CP-1-r. ``cp_token_layout`` is the
one place that layout is computed; the training data path uses it to split batches.

q, k and v are handed to the kernels as ``[b, h, s, d]`` views of ``[s, b, h, d]`` memory. FlexAttention
returns its output in the query's memory order, so reshaping it for the output projection needs no copy.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from megatron_autoalign.runtime.transfer import to_device_async

from .compiled import kernel
from .rope import apply_rope, rope_tables


def cp_token_layout(
    cu_seqlens: torch.Tensor, cp_size: int, cp_rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the tokens CP rank ``cp_rank`` holds: (document id, position in document, index in the full row).

    ``cu_seqlens`` are the global (padded) document boundaries; every document length must be
    divisible by 2*cp_size. With cp_size 1 this is simply every token in order.
    """
    cu = cu_seqlens.tolist()
    docs, positions, indices = [], [], []
    for d, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
        length = end - start
        if cp_size > 1 and length % (2 * cp_size):
            raise ValueError(f"document length {length} is not divisible by 2*CP={2 * cp_size}")
        chunk = length // (2 * cp_size)
        for c in (cp_rank, 2 * cp_size - 1 - cp_rank) if cp_size > 1 else (0,):
            lo, hi = (c * chunk, (c + 1) * chunk) if cp_size > 1 else (0, length)
            pos = torch.arange(lo, hi)
            positions.append(pos)
            indices.append(pos + start)
            docs.append(torch.full_like(pos, d))
    return torch.cat(docs), torch.cat(positions), torch.cat(indices)


@dataclass
class PackedDocuments(PackedSeqParams):
    """megatron's PackedSeqParams plus the padded document boundaries as host integers.

    The batch is collated on the host, so the boundaries are known there; with them the attention builds
    its per-token layout without reading ``cu_seqlens`` back from the GPU (a synchronisation per
    micro-batch). Plain PackedSeqParams still work: the boundaries are then read from the tensor.
    """

    boundaries: Optional[tuple] = None


class _LastValueCache:
    """Keeps the last built value: all layers of one micro-batch share the same document layout.

    Tensors in a key match by identity, not by value: reading a GPU tensor's values would stall the
    host once per layer. The cache holds the tensor, so its identity cannot be reused while cached;
    a new micro-batch brings new tensors and rebuilds once. Other key parts match by value.
    """

    def __init__(self):
        self.key = None
        self.value = None

    @staticmethod
    def _same(a, b) -> bool:
        return a is not None and len(a) == len(b) and all(
            (x is y) if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor) else x == y
            for x, y in zip(a, b)
        )

    def get(self, key, build):
        if not self._same(self.key, key):
            self.key, self.value = key, build()
        return self.value


_LAYOUT_CACHE = _LastValueCache()


# "auto": the varlen kernel where it applies, FlexAttention otherwise; "flex": always FlexAttention on GPU
# (benchmarks compare the two; the GPU tests check both against per-document SDPA).
PACKED_KERNEL = "auto"


@functools.lru_cache(maxsize=None)
def _varlen_causal():
    """torch's varlen flash attention as ``fn(q, k, v, cu_seqlens, max_len, scale)`` (q [t, h, d], k/v
    [t, h_kv, d]; causal within each segment), or None where this torch has no such entry point. Its
    keywords changed across torch releases (``is_causal`` / ``window_size``, ``enable_gqa``)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    # The flash kernel handles grouped K/V heads itself (no copies of k and v kept for the backward);
    # newer wrappers want that confirmed with ``enable_gqa``, older ones pass the heads through.
    gqa = {"enable_gqa": True} if "enable_gqa" in params else {}

    def run(q, k, v, cu, max_len, scale):
        return varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale, **causal, **gqa)

    return run


class _TokenLayout:
    """One micro-batch's attention layout, shared by all layers: (document id, position) of the local
    queries and the (CP-gathered) keys, their RoPE tables, the document boundaries (for the varlen
    kernel), and the masks built from them on first use."""

    def __init__(self, q_doc, q_pos, k_doc, k_pos, q_rope, k_rope, cu_seqlens, max_len):
        self.q_doc, self.q_pos, self.k_doc, self.k_pos = q_doc, q_pos, k_doc, k_pos
        self.q_rope, self.k_rope = q_rope, k_rope
        self.cu_seqlens, self.max_len = cu_seqlens, max_len
        self._block_mask = self._dense_mask = None

    def block_mask(self):
        """FlexAttention's block mask of the document-causal rule."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            q_doc, q_pos, k_doc, k_pos = self.q_doc, self.q_pos, self.k_doc, self.k_pos
            self._block_mask = create_block_mask(
                lambda b, h, qi, ki: _visible(q_doc[qi], q_pos[qi], k_doc[ki], k_pos[ki]),
                None, None, len(q_doc), len(k_doc), device=q_doc.device,
            )
        return self._block_mask

    def dense_mask(self):
        """The same rule as a [queries, keys] boolean mask (CPU, or attention dropout)."""
        if self._dense_mask is None:
            self._dense_mask = _visible(self.q_doc[:, None], self.q_pos[:, None], self.k_doc[None], self.k_pos[None])
        return self._dense_mask


def _visible(q_doc, q_pos, k_doc, k_pos):
    """The attention rule: a key is visible when it is in the query's document and not later."""
    return (q_doc == k_doc) & (k_pos <= q_pos)


class DocumentCausalAttention(MegatronModule):
    """Causal self-attention with document masking and context parallelism (see module docstring)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type=None,
        attention_type: str = "self",
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
        rotary_base: Optional[float] = None,
    ):
        super().__init__(config=config)
        self.rotary_base = rotary_base
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.heads = divide(config.num_attention_heads, tp)
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        assert attention_bias is None, "attention bias is not supported"
        thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
        if thd:  # [t, h, d] -> [t, 1, h, d]
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        seq_len, batch = query.shape[0], query.shape[1]

        cp_group = parallel_state.get_context_parallel_group()
        cp_size = cp_group.size()
        dropout = self.dropout if self.training else 0.0

        if cp_size > 1:
            key = gather_from_sequence_parallel_region(key, group=cp_group)
            value = gather_from_sequence_parallel_region(value, group=cp_group)

        if thd:
            bounds = getattr(packed_seq_params, "boundaries", None)
            if bounds is None:
                bounds = packed_seq_params.cu_seqlens_q_padded
                if bounds is None:
                    bounds = packed_seq_params.cu_seqlens_q
        else:
            bounds = seq_len * cp_size  # one document: the whole (CP-gathered) row
        layout = self._layout(bounds, cp_group, query.device, query.dtype)
        if self.rotary_base is not None:
            query, key, value = apply_rope(query, key, value, *layout.q_rope, *layout.k_rope)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [s, b, h, d] -> [b, h, s, d]
        if not thd and cp_size == 1:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, scale=self.softmax_scale, enable_gqa=True
            )
        elif self._use_varlen(thd, cp_size, query, dropout):
            out = _varlen_causal()(query[:, 0], key[:, 0], value[:, 0], layout.cu_seqlens, layout.max_len,
                                   self.softmax_scale)
            return out.reshape(seq_len, self.heads * self.head_dim)
        elif q.is_cuda and dropout == 0.0:
            from torch.nn.attention.flex_attention import flex_attention

            out = kernel(flex_attention, True, dynamic=False)(
                q, k, v, block_mask=layout.block_mask(), scale=self.softmax_scale, enable_gqa=True
            )
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=layout.dense_mask(), dropout_p=dropout, scale=self.softmax_scale,
                enable_gqa=True,
            )

        out = out.permute(2, 0, 1, 3).reshape(seq_len, batch, self.heads * self.head_dim)
        return out.squeeze(1) if thd else out

    @staticmethod
    def _use_varlen(thd: bool, cp_size: int, query: torch.Tensor, dropout: float) -> bool:
        return (thd and cp_size == 1 and query.is_cuda and dropout == 0.0 and PACKED_KERNEL == "auto"
                and query.dtype in (torch.bfloat16, torch.float16) and _varlen_causal() is not None)

    def _layout(self, bounds, cp_group, device, dtype) -> _TokenLayout:
        """This micro-batch's layout; ``bounds``: padded document boundaries (host tuple or tensor) or a
        row length."""
        cp_size, cp_rank = cp_group.size(), cp_group.rank()

        def build():
            if isinstance(bounds, int):
                cu = torch.tensor([0, bounds])
            else:
                cu = bounds.cpu() if isinstance(bounds, torch.Tensor) else torch.tensor(bounds)
            per_rank = [cp_token_layout(cu, cp_size, r) for r in range(cp_size)]
            q_doc, q_pos, _ = per_rank[cp_rank]
            k_doc = torch.cat([p[0] for p in per_rank])
            k_pos = torch.cat([p[1] for p in per_rank])
            # Built on the host, copied without a synchronisation: this runs in the first layer, while the
            # GPU may still be busy with the previous step's optimizer update.
            q_doc, q_pos, k_doc, k_pos = (to_device_async(t, device) for t in (q_doc, q_pos, k_doc, k_pos))
            q_rope = k_rope = None
            if self.rotary_base is not None:
                q_rope = rope_tables(q_pos, self.head_dim, self.rotary_base, dtype)
                k_rope = q_rope if cp_size == 1 else rope_tables(k_pos, self.head_dim, self.rotary_base, dtype)
            return _TokenLayout(q_doc, q_pos, k_doc, k_pos, q_rope, k_rope,
                                to_device_async(cu.to(torch.int32), device), int((cu[1:] - cu[:-1]).max()))

        key = (bounds, cp_size, cp_rank, str(device), dtype, self.rotary_base, self.head_dim)
        return _LAYOUT_CACHE.get(key, build)
