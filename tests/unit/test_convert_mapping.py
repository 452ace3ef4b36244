"""The HF <-> megatron tensor table (Qwen2's rows), on hand-built tensors whose every row says where it came from."""

import pytest
import torch

from megatron_autoalign.models.hf_config import stage_layers
from megatron_autoalign.models.qwen2 import FAMILY
from megatron_autoalign.models.tensor_map import Dims

DIMS = Dims(num_layers=3, hidden=4, ffn=6, heads=4, kv_heads=2, head_dim=2, vocab=8, tied=False)
QKV_W = FAMILY.tensor("self_attention.linear_qkv.weight", per_layer=True)
QKV_B = FAMILY.tensor("self_attention.linear_qkv.bias", per_layer=True)
PROJ = FAMILY.tensor("self_attention.linear_proj.weight", per_layer=True)
FC1 = FAMILY.tensor("mlp.linear_fc1.weight", per_layer=True)


def qkv_hf_to_mcore(q, k, v, dims):
    return QKV_W.fuse.to_megatron([q, k, v], dims)


def qkv_mcore_to_hf(qkv, dims):
    return QKV_W.fuse.to_hf(qkv, dims, 3)


def rows(tag: float, n: int) -> torch.Tensor:
    """n rows of width 4; row i holds tag + i (so a row's origin is readable from its value)."""
    return (tag + torch.arange(n, dtype=torch.float32)).unsqueeze(1).repeat(1, 4)


def test_qkv_grouped_layout():
    # q: 4 heads x 2 dims (rows 100..107), k and v: 2 groups x 2 dims
    q, k, v = rows(100, 8), rows(200, 4), rows(300, 4)
    qkv = qkv_hf_to_mcore(q, k, v, DIMS)
    # group 0: q heads 0,1 (100..103), k head 0 (200,201), v head 0 (300,301); then group 1
    expected = [100, 101, 102, 103, 200, 201, 300, 301, 104, 105, 106, 107, 202, 203, 302, 303]
    assert qkv[:, 0].tolist() == expected
    back = qkv_mcore_to_hf(qkv, DIMS)
    for a, b in zip(back, (q, k, v)):
        assert torch.equal(a, b)


def test_qkv_bias_follows_weight_order():
    qb, kb, vb = torch.arange(8.0), 10 + torch.arange(4.0), 20 + torch.arange(4.0)
    hf = {f"model.layers.0.self_attn.{x}_proj.bias": t for x, t in zip("qkv", (qb, kb, vb))}
    fused = QKV_B.to_megatron(hf.__getitem__, 0, DIMS)
    assert fused.tolist() == [0, 1, 2, 3, 10, 11, 20, 21, 4, 5, 6, 7, 12, 13, 22, 23]
    back = QKV_B.to_hf(fused, 0, DIMS)
    assert [n for n, _ in back] == list(hf) and all(torch.equal(t, hf[n]) for n, t in back)


def test_tp_split_of_qkv_keeps_whole_groups():
    qkv = qkv_hf_to_mcore(rows(100, 8), rows(200, 4), rows(300, 4), DIMS)
    rank0, rank1 = QKV_W.split_for_tp(qkv, 2)
    assert rank0[:, 0].tolist() == [100, 101, 102, 103, 200, 201, 300, 301]  # group 0 only
    assert rank1[:, 0].tolist() == [104, 105, 106, 107, 202, 203, 302, 303]


def test_fc1_rank_holds_its_gate_then_its_up():
    gate, up = rows(0, 6), rows(50, 6)
    fc1 = torch.cat([gate, up])
    shards = FC1.split_for_tp(fc1, 2)
    assert shards[0][:, 0].tolist() == [0, 1, 2, 50, 51, 52]
    assert shards[1][:, 0].tolist() == [3, 4, 5, 53, 54, 55]
    assert torch.equal(FC1.merge_from_tp(shards), fc1)


def test_row_parallel_split_dim_and_round_trip():
    w = torch.arange(32.0).reshape(4, 8)
    shards = PROJ.split_for_tp(w, 2)
    assert [tuple(s.shape) for s in shards] == [(4, 4), (4, 4)]
    assert torch.equal(PROJ.merge_from_tp(shards), w)
    # each shard owns its storage: torch.save of a view would write the whole tensor
    assert all(s.untyped_storage().size() == s.numel() * s.element_size() for s in shards)


def test_split_refuses_indivisible():
    with pytest.raises(ValueError, match="does not split"):
        PROJ.split_for_tp(torch.zeros(4, 6), 4)


@pytest.mark.parametrize("layers,pp,expected", [
    (3, 1, [(0, 3)]), (3, 2, [(0, 2), (2, 3)]), (3, 3, [(0, 1), (1, 2), (2, 3)]),
    (4, 3, [(0, 2), (2, 3), (3, 4)]), (28, 3, [(0, 10), (10, 19), (19, 28)]),
])
def test_stage_layers_matches_megatron_uneven_split(layers, pp, expected):
    cfg = {"num_hidden_layers": layers, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 256}
    assert [(r.start, r.stop) for r in stage_layers(cfg, pp)] == expected


def test_legacy_layer_order_follows_each_spec_module_order():
    from megatron_autoalign.models.tensor_map import legacy_layer_entries

    te = [name for name, _ in legacy_layer_entries(FAMILY.layer_tensors, use_te=True)]
    assert te == [
        "self_attention.core_attention._extra_state", "self_attention.linear_proj.weight",
        "self_attention.linear_proj._extra_state", "self_attention.linear_qkv.layer_norm_weight",
        "self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "self_attention.linear_qkv._extra_state",
        "mlp.linear_fc1.layer_norm_weight", "mlp.linear_fc1.weight", "mlp.linear_fc1._extra_state",
        "mlp.linear_fc2.weight", "mlp.linear_fc2._extra_state",
    ]
    local = [name for name, _ in legacy_layer_entries(FAMILY.layer_tensors, use_te=False)]
    assert local == [
        "input_layernorm.weight", "self_attention.linear_proj.weight", "self_attention.linear_proj._extra_state",
        "self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "self_attention.linear_qkv._extra_state",
        "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight", "mlp.linear_fc1._extra_state",
        "mlp.linear_fc2.weight", "mlp.linear_fc2._extra_state",
    ]
