"""The Qwen2 / Qwen2.5 family: named sizes, its TransformerConfig fields and its HF <-> megatron tensor table."""

from ..family import ModelFamily, ModelSize
from ..tensor_map import (
    COLUMN, CONCAT, EMBEDDING, FINAL_NORM, GATED, GROUPED_QKV, OUTPUT, REPLICATED, ROW, TensorMapping,
)

QWEN2_5_SIZES: dict[str, ModelSize] = {
    "0.5B": ModelSize(24, 896, 4864, 14, 2, 151936, True),
    "1.5B": ModelSize(28, 1536, 8960, 12, 2, 151936, True),
    "3B": ModelSize(36, 2048, 11008, 16, 2, 151936, True),
    "7B": ModelSize(28, 3584, 18944, 28, 4, 152064, False),
    "14B": ModelSize(48, 5120, 13824, 40, 8, 152064, False),
    "32B": ModelSize(64, 5120, 27648, 40, 8, 152064, False),
    "72B": ModelSize(80, 8192, 29568, 64, 8, 152064, False),
}

GLOBAL_TENSORS = (
    TensorMapping(EMBEDDING, ("model.embed_tokens.weight",), COLUMN, per_layer=False),  # vocab-parallel
    TensorMapping(FINAL_NORM, ("model.norm.weight",), REPLICATED, per_layer=False),
    TensorMapping(OUTPUT, ("lm_head.weight",), COLUMN, per_layer=False, untied_only=True),
)


def attention_norm() -> TensorMapping:
    return TensorMapping("self_attention.linear_qkv.layer_norm_weight", ("input_layernorm.weight",),
                         local="input_layernorm.weight")


def qkv_weight() -> TensorMapping:
    names = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
    return TensorMapping("self_attention.linear_qkv.weight", names, COLUMN, GROUPED_QKV)


def attention_out_and_mlp() -> tuple[TensorMapping, ...]:
    """o_proj, the MLP's norm and the SwiGLU MLP: the same in every Qwen generation."""
    return (
        TensorMapping("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), ROW),
        TensorMapping("mlp.linear_fc1.layer_norm_weight", ("post_attention_layernorm.weight",),
                      local="pre_mlp_layernorm.weight"),
        TensorMapping("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), GATED, CONCAT),
        TensorMapping("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), ROW),
    )


LAYER_TENSORS = (
    attention_norm(),
    qkv_weight(),
    TensorMapping("self_attention.linear_qkv.bias",
                  ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), COLUMN, GROUPED_QKV),
    *attention_out_and_mlp(),
)


FAMILY = ModelFamily(
    name="qwen2.5",
    display="Qwen2.5",
    model_type="qwen2",
    architectures=("Qwen2ForCausalLM",),
    sizes=QWEN2_5_SIZES,
    global_tensors=GLOBAL_TENSORS,
    layer_tensors=LAYER_TENSORS,
    config_fields=lambda hf_config: {"add_qkv_bias": True},
    aliases=("qwen2",),
)
