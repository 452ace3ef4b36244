"""HF ``config.json`` -> model family, shapes and megatron-core TransformerConfig (family-independent).

The HF config is the source of truth for shapes; a named size (``1.5B``, ``qwen3-8B``...) is only checked
against it. The config's ``model_type`` picks the family (``registry.py``).
"""

from __future__ import annotations

import json
import os

import torch

from .family import ConfigError, ModelFamily, ModelSize
from .registry import FAMILIES
from .tensor_map import Dims


# Shapes a Qwen config.json always names; a file without them is not a model config (one-line error).
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size")


def load_hf_config(path: str) -> dict:
    """Read ``config.json`` from an HF model directory (or the file itself).

    What the file leaves out is filled in by transformers' own config class of its model_type, so a value is never read
    differently from HF (``rope_theta`` without ``rope_parameters`` is HF's 10000, not Qwen2.5's 1e6).
    """
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ConfigError(f"{file}: no config.json found")
    try:
        with open(file) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    archs = cfg.get("architectures") or []
    supported = [a for f in FAMILIES.values() for a in f.architectures]
    if archs and not any(a in supported for a in archs):
        raise ConfigError(f"{file}: unsupported architecture {archs}; supported: {tuple(supported)}")
    try:
        family_of(cfg)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"{file}: missing {', '.join(missing)} (a model config.json names every shape)")
    return _with_hf_defaults(cfg, file)


def _with_hf_defaults(cfg: dict, file: str) -> dict:
    from transformers import AutoConfig

    model_type = cfg.get("model_type", "qwen2")
    try:
        hf = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"{file}: transformers' {model_type} config rejects it ({type(e).__name__}: {e})") from None
    rope = getattr(hf, "rope_parameters", None) or {"rope_theta": getattr(hf, "rope_theta", None),
                                                     "rope_type": (getattr(hf, "rope_scaling", None) or {}).get("rope_type", "default")}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"{file}: rope type {rope['rope_type']!r} is not supported (only the default RoPE)")
    full = dict(cfg)
    full["rope_theta"] = float(rope["rope_theta"])
    for key in ("rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "initializer_range"):
        full.setdefault(key, getattr(hf, key))
    return full


def family_of(cfg: dict) -> ModelFamily:
    """The family of an HF config (``model_type``; configs without one are Qwen2, as before)."""
    model_type = cfg.get("model_type", "qwen2")
    if model_type not in FAMILIES:
        raise ConfigError(f"unsupported model_type {model_type!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def size_of(cfg: dict) -> ModelSize:
    return ModelSize(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        vocab_size=cfg["vocab_size"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        head_dim=head_dim(cfg),
    )


def head_dim(cfg: dict) -> int:
    """Per-head width: ``head_dim`` when the config sets it, else hidden_size / heads."""
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def dims_of(cfg: dict) -> Dims:
    s = size_of(cfg)
    return Dims(s.num_layers, s.hidden_size, s.ffn_hidden_size, s.num_attention_heads,
                s.num_key_value_heads, s.head_dim, s.vocab_size, s.tie_word_embeddings)


def split_size_name(name: str) -> tuple[str | None, str]:
    """'qwen3-8B' -> ('qwen3', '8B'); '1.5B' -> (None, '1.5B'): the family is then the config's."""
    prefix, sep, size = name.rpartition("-")
    return (prefix.lower(), size) if sep else (None, name)


def check_model_size(name: str, cfg: dict) -> None:
    """Raise ConfigError when ``name`` ('1.5B', 'qwen3-8B', 'qwen2.5-7B') does not describe ``cfg``;
    'auto' accepts any. A size without a family prefix is looked up in the config's own family."""
    if name in (None, "", "auto"):
        return
    family = family_of(cfg)
    prefix, size = split_size_name(name)
    if prefix is not None and prefix not in (family.name, *family.aliases):
        named = [f for f in FAMILIES.values() if prefix in (f.name, *f.aliases)]
        if not named:
            known = ", ".join(sorted(f.name for f in FAMILIES.values()))
            raise ConfigError(f"unknown model family {prefix!r} in size {name!r}; known: {known}")
        raise ConfigError(f"model size {name} is not a {family.display} size, but config.json is {family.display} "
                          f"(model_type {family.model_type!r}); {name} names a {named[0].display} model")
    if size not in family.sizes:
        raise ConfigError(f"unknown model size {name!r} for {family.display}; known: {', '.join(family.sizes)} or auto")
    expected, actual = family.sizes[size], size_of(cfg)
    diffs = [
        f"{field}: {name} has {getattr(expected, field)}, config has {getattr(actual, field)}"
        for field in expected.__dataclass_fields__
        if getattr(expected, field) is not None and getattr(expected, field) != getattr(actual, field)
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
    """megatron-core TransformerConfig for an HF config of any registered family.

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
    fields.update(family_of(cfg).config_fields(cfg))
    fields.update(overrides)
    if "bias_dropout_fusion" not in overrides and not fields["hidden_dropout"] and not fields["add_bias_linear"]:
        # No bias and no dropout: megatron's unfused path is then one residual add launched as an
        # operator, where the "fused" one is a compiled region costing the host ~2.5x as much per call.
        fields["bias_dropout_fusion"] = False
    return TransformerConfig(**fields)


def rope_theta(cfg: dict) -> float:
    """RoPE base; a dict from ``load_hf_config`` always has it (HF's default, 10000, when the file has none)."""
    rope = cfg.get("rope_parameters") or {}
    return float(cfg.get("rope_theta") or rope.get("rope_theta") or 10_000.0)


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


def stage_layers(hf_config: dict, pp: int) -> list[range]:
    """Global layer indices on each pipeline stage, as megatron places them (uneven splits included)."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    num_layers = size_of(hf_config).num_layers
    if pp == 1:
        return [range(num_layers)]
    cfg = transformer_config_from_hf(hf_config, pipeline_model_parallel_size=pp, **pipeline_split(num_layers, pp))
    out = []
    for r in range(pp):
        start = get_transformer_layer_offset(cfg, pp_rank=r)
        out.append(range(start, start + get_num_layers_to_build(cfg, pp_rank=r)))
    return out
