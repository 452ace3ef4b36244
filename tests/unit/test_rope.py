"""Our RoPE (tables from per-token positions, q and k rotated together) against HF transformers' Qwen2."""

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb

from megatron_autoalign.models.rope import apply_rope, rope_tables

HEAD_DIM, THETA = 16, 1_000_000.0


def _hf_rope(q, k, positions):
    """q [s, h, d], k [s, g, d] rotated by HF for the given positions."""
    config = Qwen2Config(hidden_size=HEAD_DIM * 4, num_attention_heads=4, rope_theta=THETA)
    cos, sin = Qwen2RotaryEmbedding(config)(q, positions[None])
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    return q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_rope_matches_hf(dtype, tol):
    torch.manual_seed(0)
    positions = torch.tensor([0, 1, 2, 3, 0, 1, 7000, 123])  # restarts, as in packed documents
    q = torch.randn(8, 4, HEAD_DIM, dtype=dtype)
    k = torch.randn(8, 2, HEAD_DIM, dtype=dtype)
    q_cos, q_sin = rope_tables(positions, HEAD_DIM, THETA, dtype)
    q_ours, k_ours, _ = apply_rope(q[:, None], k[:, None], k[:, None], q_cos, q_sin, q_cos, q_sin)
    q_hf, k_hf = _hf_rope(q, k, positions)
    torch.testing.assert_close(q_ours[:, 0], q_hf, atol=tol, rtol=tol)
    torch.testing.assert_close(k_ours[:, 0], k_hf, atol=tol, rtol=tol)
    assert not torch.allclose(q_ours[:, 0], q, atol=tol)  # it did rotate


def test_attention_applies_rope_per_document():
    """Packed documents with RoPE: each document as if alone (positions restart at 0), the HF way."""
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer import TransformerConfig

    from megatron_autoalign.models.attention import DocumentCausalAttention
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                               kv_channels=HEAD_DIM, attention_dropout=0.0, use_cpu_initialization=True)
    attention = DocumentCausalAttention(config, layer_number=1, rotary_base=THETA)
    torch.manual_seed(1)
    lengths = [5, 1, 9]
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    q = torch.randn(15, 4, HEAD_DIM, dtype=torch.float64)
    k = torch.randn(15, 2, HEAD_DIM, dtype=torch.float64)
    v = torch.randn(15, 2, HEAD_DIM, dtype=torch.float64)
    out = attention(q, k, v, None, packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu))

    expected = []
    for start, n in zip(cu[:-1].tolist(), lengths):
        qd, kd = _hf_rope(q[start:start + n], k[start:start + n], torch.arange(n))
        o = F.scaled_dot_product_attention(
            qd.transpose(0, 1), kd.repeat_interleave(2, 1).transpose(0, 1),
            v[start:start + n].repeat_interleave(2, 1).transpose(0, 1), is_causal=True,
        )
        expected.append(o.transpose(0, 1).reshape(n, -1))
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-10, rtol=0)

    # The unpacked path: one row is one document starting at position 0.
    row = attention(q[:9, None], k[:9, None], v[:9, None], None)
    torch.testing.assert_close(row[:, 0], _single_doc(q[:9], k[:9], v[:9]), atol=1e-10, rtol=0)


def _single_doc(q, k, v):
    qd, kd = _hf_rope(q, k, torch.arange(q.shape[0]))
    o = F.scaled_dot_product_attention(
        qd.transpose(0, 1), kd.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1),
        is_causal=True,
    )
    return o.transpose(0, 1).reshape(q.shape[0], -1)
