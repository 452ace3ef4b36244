"""The Qwen2 family on megatron-core: sizes, config, spec, builder (and the HF tensor mapping)."""

from .builder import build_gpt_model, build_model_chunks, resolve_transformer_impl
from .qwen2_mapping import load_hf_weights_into_model
from .qwen2 import (
    QWEN2_5_SIZES,
    ConfigError,
    check_model_size,
    check_tensor_parallel,
    load_hf_config,
    pipeline_split,
    transformer_config_from_hf,
)

__all__ = [
    "QWEN2_5_SIZES",
    "ConfigError",
    "build_gpt_model",
    "build_model_chunks",
    "check_model_size",
    "check_tensor_parallel",
    "load_hf_config",
    "load_hf_weights_into_model",
    "pipeline_split",
    "resolve_transformer_impl",
    "transformer_config_from_hf",
]
