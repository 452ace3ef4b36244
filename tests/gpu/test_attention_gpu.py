"""On GPU the packed-document path runs torch's varlen flash attention (bf16, where torch has it) or
FlexAttention; both must equal per-document causal SDPA in fp32."""

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("kernel", ["auto", "flex"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_packed_document_attention_matches_per_document_sdpa(dtype, tol, kernel, monkeypatch):
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer import TransformerConfig

    from megatron_autoalign.models import attention
    from megatron_autoalign.models.attention import DocumentCausalAttention
    from megatron_autoalign.runtime import init_distributed

    monkeypatch.setattr(attention, "PACKED_KERNEL", kernel)
    if kernel == "auto" and dtype == torch.bfloat16:
        print("varlen kernel available:", attention._varlen_causal() is not None)

    init_distributed(1, 1)
    config = TransformerConfig(num_layers=1, hidden_size=512, num_attention_heads=8, num_query_groups=2,
                               kv_channels=64, attention_dropout=0.0)
    attn = DocumentCausalAttention(config, layer_number=1).cuda()
    torch.manual_seed(0)
    lengths = [300, 17, 1000, 1, 730]
    total = sum(lengths)
    q = torch.randn(total, 8, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(total, 2, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(total, 2, 64, device="cuda", dtype=dtype, requires_grad=True)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    out = attn(q, k, v, None, packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu))
    upstream = torch.randn_like(out, dtype=torch.float32)
    out.float().mul(upstream).sum().backward()
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        o = F.scaled_dot_product_attention(
            q32[s:e].transpose(0, 1), k32[s:e].repeat_interleave(4, 1).transpose(0, 1),
            v32[s:e].repeat_interleave(4, 1).transpose(0, 1), is_causal=True)
        ref.append(o.transpose(0, 1).reshape(e - s, -1))
    ref = torch.cat(ref)
    ref.mul(upstream).sum().backward()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < tol, rel
    for name, got, want in (("q", q.grad, q32.grad), ("k", k.grad, k32.grad), ("v", v.grad, v32.grad)):
        rel = (got.float() - want).norm() / want.norm()
        assert rel < tol, (name, rel)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_compiled_rope_matches_hf(dtype, tol):
    """On GPU RoPE is a compiled kernel (fp32 arithmetic inside); it must still be HF's rotation."""
    from megatron_autoalign.models.rope import apply_rope, rope_tables
    from tests.unit.test_rope import HEAD_DIM, THETA, _hf_rope

    torch.manual_seed(0)
    positions = torch.cat([torch.arange(700), torch.arange(3000)]).cuda()  # two packed documents
    q = torch.randn(3700, 4, HEAD_DIM, device="cuda", dtype=dtype)
    k = torch.randn(3700, 2, HEAD_DIM, device="cuda", dtype=dtype)
    cos, sin = rope_tables(positions, HEAD_DIM, THETA, dtype)
    q_ours, k_ours, v_copy = apply_rope(q[:, None], k[:, None], k[:, None], cos, sin, cos, sin)
    q_hf, k_hf = _hf_rope(q, k, positions)
    torch.testing.assert_close(q_ours[:, 0], q_hf, atol=tol, rtol=tol)
    torch.testing.assert_close(k_ours[:, 0], k_hf, atol=tol, rtol=tol)
    assert torch.equal(v_copy[:, 0], k) and v_copy.is_contiguous()
