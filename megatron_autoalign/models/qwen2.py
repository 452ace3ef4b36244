"""The Qwen2 / Qwen2.5 family: named sizes and HF ``config.json`` -> megatron-core TransformerConfig.

The HF config is the source of truth for shapes; a named size (``1.5B``...) is only checked against it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Qwen2Size:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool


QWEN2_5_SIZES: dict[str, Qwen2Size] = {
    "0.5B": Qwen2Size(24, 896, 4864, 14, 2, 151936, True),
    "1.5B": Qwen2Size(28, 1536, 8960, 12, 2, 151936, True),
    "3B": Qwen2Size(36, 2048, 11008, 16, 2, 151936, True),
    "7B": Qwen2Size(28, 3584, 18944, 28, 4, 152064, False),
    "14B": Qwen2Size(48, 5120, 13824, 40, 8, 152064, False),
    "32B": Qwen2Size(64, 5120, 27648, 40, 8, 152064, False),
    "72B": Qwen2Size(80, 8192, 29568, 64, 8, 152064, False),
}

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM",)


class ConfigError(ValueError):
    """A config that this toolkit cannot build or that disagrees with the requested size."""


def load_hf_config(path: str) -> dict:
    """Read ``config.json`` from an HF model directory (or the file itself)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"{file}: no config.json found")
    try:
        with open(file) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    archs = cfg.get("architectures") or []
    if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ConfigError(f"{file}: unsupported architecture {archs}; supported: {SUPPORTED_ARCHITECTURES}")
    if cfg.get("model_type", "qwen2") != "qwen2":
        raise ConfigError(f"{file}: unsupported model_type {cfg.get('model_type')!r}; expected 'qwen2'")
    return cfg


def size_of(cfg: dict) -> Qwen2Size:
    return Qwen2Size(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        vocab_size=cfg["vocab_size"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def head_dim(cfg: dict) -> int:
    """Per-head width: ``head_dim`` when the config sets it, else hidden_size / heads."""
    size = size_of(cfg)
    return cfg.get("head_dim") or size.hidden_size // size.num_attention_heads


def check_model_size(name: str, cfg: dict) -> None:
    """Raise ConfigError when ``name`` (e.g. '1.5B') does not describe ``cfg``; 'auto' accepts any."""
    if name in (None, "", "auto"):
        return
    if name not in QWEN2_5_SIZES:
        raise ConfigError(f"unknown model size {name!r}; known: {', '.join(QWEN2_5_SIZES)} or auto")
    expected, actual = QWEN2_5_SIZES[name], size_of(cfg)
    diffs = [
        f"{field}: {name} has {getattr(expected, field)}, config has {getattr(actual, field)}"
        for field in expected.__dataclass_fields__
        if getattr(expected, field) != getattr(actual, field)
    ]
    if diffs:
        raise ConfigError(f"model size {name} does not match config.json ({'; '.join(diffs)})")


def check_tensor_parallel(cfg: dict, tp: int) -> None:
    """TP splits whole KV groups (and whole attention heads)."""
    size = size_of(cfg)
    if size.num_key_value_heads % tp:
        raise ConfigError(
            f"TP={tp} must divide the number of KV heads ({size.num_key_value_heads}) of this model"
        )
    if size.num_attention_heads % tp:
        raise ConfigError(f"TP={tp} must divide the number of attention heads ({size.num_attention_heads})")


def transformer_config_from_hf(cfg: dict, params_dtype: torch.dtype = torch.float32, **overrides):
    """megatron-core TransformerConfig for a Qwen2 HF config.

    ``overrides`` are TransformerConfig fields (parallel sizes, recompute, bf16, ...).
    """
    from megatron.core.transformer import TransformerConfig

    size = size_of(cfg)
    # megatron's fused SwiGLU and bias-dropout-add are torch.compile'd kernels: worth it on GPU only.
    on_gpu = torch.cuda.is_available()
    fields = dict(
        num_layers=size.num_layers,
        hidden_size=size.hidden_size,
        ffn_hidden_size=size.ffn_hidden_size,
        num_attention_heads=size.num_attention_heads,
        num_query_groups=size.num_key_value_heads,
        kv_channels=head_dim(cfg),
        normalization="RMSNorm",
        layernorm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        pipeline_dtype=params_dtype,
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        use_cpu_initialization=not on_gpu,
    )
    fields.update(overrides)
    if "bias_dropout_fusion" not in overrides and not fields["hidden_dropout"] and not fields["add_bias_linear"]:
        # No bias and no dropout: megatron's unfused path is then one residual add launched as an
        # operator, where the "fused" one is a compiled region costing the host ~2.5x as much per call.
        fields["bias_dropout_fusion"] = False
    return TransformerConfig(**fields)


def rope_theta(cfg: dict) -> float:
    rope = cfg.get("rope_parameters") or {}
    return float(cfg.get("rope_theta") or rope.get("rope_theta") or 1_000_000.0)


def pipeline_split(num_layers: int, pp: int) -> dict:
    """TransformerConfig fields that place ``num_layers`` on ``pp`` stages, uneven counts included.

    Middle stages get ``num_layers // pp`` layers; the remainder goes to the first and last stages.
    """
    if pp <= 1 or num_layers % pp == 0:
        return {}
    if num_layers < pp:
        raise ConfigError(f"PP={pp} is larger than the number of layers ({num_layers})")
    middle = num_layers // pp
    rest = num_layers - middle * (pp - 2)
    first = (rest + 1) // 2
    return {"num_layers_in_first_pipeline_stage": first, "num_layers_in_last_pipeline_stage": rest - first}
