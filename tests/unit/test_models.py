"""Qwen2 family config checks and the document-causal core attention against a per-document reference."""

import json

import pytest
import torch
import torch.nn.functional as F

from megatron_autoalign.models import (
    QWEN2_5_SIZES,
    ConfigError,
    check_model_size,
    check_tensor_parallel,
    load_hf_config,
    pipeline_split,
)


def _hf_config(name):
    s = QWEN2_5_SIZES[name]
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": s.num_layers,
        "hidden_size": s.hidden_size, "intermediate_size": s.ffn_hidden_size,
        "num_attention_heads": s.num_attention_heads, "num_key_value_heads": s.num_key_value_heads,
        "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_word_embeddings,
    }


def test_named_size_matches_and_mismatch_is_explained():
    check_model_size("1.5B", _hf_config("1.5B"))
    check_model_size("auto", _hf_config("7B"))
    with pytest.raises(ConfigError, match="hidden_size: 7B has 3584, config has 1536"):
        check_model_size("7B", _hf_config("1.5B"))
    with pytest.raises(ConfigError, match="unknown model size"):
        check_model_size("2B", _hf_config("1.5B"))


def test_tp_must_divide_kv_groups():
    check_tensor_parallel(_hf_config("7B"), 4)
    with pytest.raises(ConfigError, match=r"TP=4 must divide the number of KV heads \(2\)"):
        check_tensor_parallel(_hf_config("1.5B"), 4)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        load_hf_config(str(tmp_path))


@pytest.mark.parametrize("layers,pp", [(4, 2), (3, 2), (7, 3), (5, 4)])
def test_pipeline_split_covers_every_layer(layers, pp):
    fields = pipeline_split(layers, pp)
    if not fields:
        assert layers % pp == 0
        return
    first, last = fields["num_layers_in_first_pipeline_stage"], fields["num_layers_in_last_pipeline_stage"]
    middle = (layers - first - last) / (pp - 2) if pp > 2 else 0
    assert first >= 1 and last >= 1 and middle == int(middle)
    assert first + last + int(middle) * (pp - 2) == layers


@pytest.fixture
def attention():
    from megatron.core.transformer import TransformerConfig

    from megatron_autoalign.models.attention import DocumentCausalAttention
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                               kv_channels=8, attention_dropout=0.0, use_cpu_initialization=True)
    return DocumentCausalAttention(config, layer_number=1)


def test_packed_documents_match_separate_causal_attention(attention):
    from megatron.core.packed_seq_params import PackedSeqParams

    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    total = sum(lengths)
    q = torch.randn(total, 4, 8, dtype=torch.float64)
    k = torch.randn(total, 2, 8, dtype=torch.float64)
    v = torch.randn(total, 2, 8, dtype=torch.float64)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu)
    out = attention(q, k, v, None, packed_seq_params=params)

    expected = []
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qd = q[start:end].transpose(0, 1)  # [h, s, d]
        kd = k[start:end].repeat_interleave(2, dim=1).transpose(0, 1)
        vd = v[start:end].repeat_interleave(2, dim=1).transpose(0, 1)
        scores = qd @ kd.transpose(-1, -2) / 8**0.5
        causal = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        expected.append((probs @ vd).transpose(0, 1).reshape(end - start, 32))
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-12, rtol=0)

    # The same boundaries given on the host (as the training batches give them): the same result.
    from megatron_autoalign.models.attention import PackedDocuments

    host = PackedDocuments(qkv_format="thd", boundaries=tuple(cu.tolist()))  # no boundary tensor at all
    torch.testing.assert_close(attention(q, k, v, None, packed_seq_params=host), out, atol=0, rtol=0)


def test_unpacked_batch_is_plain_causal(attention):
    torch.manual_seed(1)
    q = torch.randn(6, 3, 4, 8, dtype=torch.float64)  # [s, b, h, d]
    k = torch.randn(6, 3, 2, 8, dtype=torch.float64)
    v = torch.randn(6, 3, 2, 8, dtype=torch.float64)
    out = attention(q, k, v, None)
    ref = F.scaled_dot_product_attention(
        q.permute(1, 2, 0, 3), k.repeat_interleave(2, 2).permute(1, 2, 0, 3),
        v.repeat_interleave(2, 2).permute(1, 2, 0, 3), is_causal=True,
    ).permute(2, 0, 1, 3).reshape(6, 3, 32)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_cp_token_layout_is_load_balanced():
    from megatron_autoalign.models.attention import cp_token_layout

    cu = torch.tensor([0, 8, 12])
    doc, pos, idx = cp_token_layout(cu, cp_size=2, cp_rank=0)
    # doc 0 (len 8, chunks of 2): chunks 0 and 3; doc 1 (len 4, chunks of 1): chunks 0 and 3
    assert idx.tolist() == [0, 1, 6, 7, 8, 11]
    assert pos.tolist() == [0, 1, 6, 7, 0, 3]
    assert doc.tolist() == [0, 0, 0, 0, 1, 1]
    doc1, pos1, idx1 = cp_token_layout(cu, cp_size=2, cp_rank=1)
    assert sorted(idx.tolist() + idx1.tolist()) == list(range(12))
    with pytest.raises(ValueError, match="not divisible"):
        cp_token_layout(torch.tensor([0, 6]), cp_size=2, cp_rank=0)


def test_layout_cache_tells_tensors_and_lengths_apart(attention):
    """The per-micro-batch layout cache keys tensors by identity: a new boundaries tensor with other
    values, or a plain row length after a tensor, must rebuild (a stale mask would be silently wrong)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    torch.manual_seed(2)
    q = torch.randn(8, 4, 8, dtype=torch.float64)
    k = torch.randn(8, 2, 8, dtype=torch.float64)
    v = torch.randn(8, 2, 8, dtype=torch.float64)

    def packed(bounds):
        cu = torch.tensor(bounds, dtype=torch.int32)
        return attention(q, k, v, None, packed_seq_params=PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu))

    one_doc, two_docs = packed([0, 8]), packed([0, 4, 8])
    assert not torch.allclose(one_doc, two_docs)
    torch.testing.assert_close(packed([0, 8]), one_doc, atol=1e-12, rtol=0)
    plain = attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), None).squeeze(1)
    torch.testing.assert_close(plain, one_doc, atol=1e-12, rtol=0)
