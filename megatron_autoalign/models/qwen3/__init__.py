"""The Qwen3 dense family: Qwen2's layer without the qkv bias, plus an RMSNorm over each q and k head.

Differences from Qwen2.5 that the rest of the toolkit sees only through this declaration:
- ``q_norm`` / ``k_norm`` (one ``[head_dim]`` weight each, shared by all heads, applied before RoPE):
  megatron-core's ``qk_layernorm`` (``self_attention.q_layernorm`` / ``k_layernorm``), replicated over TP;
- no q/k/v bias (``attention_bias`` false; a config with it true is refused);
- ``head_dim`` (128 for every size) set independently of hidden_size / heads (4B: 2560 / 32 = 80).
Sizes are the HF ``config.json`` values of Qwen/Qwen3-{size}; the 0.6B, 1.7B and 4B tie their embeddings.
"""

from ..family import ConfigError, ModelFamily, ModelSize
from ..qwen2 import GLOBAL_TENSORS, attention_norm, attention_out_and_mlp, qkv_weight
from ..tensor_map import TensorMapping

QWEN3_SIZES: dict[str, ModelSize] = {
    "0.6B": ModelSize(28, 1024, 3072, 16, 8, 151936, True, head_dim=128),
    "1.7B": ModelSize(28, 2048, 6144, 16, 8, 151936, True, head_dim=128),
    "4B": ModelSize(36, 2560, 9728, 32, 8, 151936, True, head_dim=128),
    "8B": ModelSize(36, 4096, 12288, 32, 8, 151936, False, head_dim=128),
    "14B": ModelSize(40, 5120, 17408, 40, 8, 151936, False, head_dim=128),
    "32B": ModelSize(64, 5120, 25600, 64, 8, 151936, False, head_dim=128),
}

LAYER_TENSORS = (
    attention_norm(),
    qkv_weight(),
    TensorMapping("self_attention.q_layernorm.weight", ("self_attn.q_norm.weight",)),
    TensorMapping("self_attention.k_layernorm.weight", ("self_attn.k_norm.weight",)),
    *attention_out_and_mlp(),
)


def config_fields(hf_config: dict) -> dict:
    if hf_config.get("attention_bias"):
        raise ConfigError("Qwen3 with attention_bias=true is not supported (the released models have no attention bias)")
    return {"add_qkv_bias": False, "qk_layernorm": True}


FAMILY = ModelFamily(
    name="qwen3",
    display="Qwen3",
    model_type="qwen3",
    architectures=("Qwen3ForCausalLM",),
    sizes=QWEN3_SIZES,
    global_tensors=GLOBAL_TENSORS,
    layer_tensors=LAYER_TENSORS,
    config_fields=config_fields,
)
