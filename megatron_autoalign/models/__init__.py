"""Model families on megatron-core: the registry, HF config -> TransformerConfig, the GPT builder.

Each family (``qwen2/``, ...) declares its sizes, TransformerConfig fields and HF <-> megatron tensor table
once (``family.py``, ``tensor_map.py``); ``registry.py`` lists them.
"""

from .builder import build_gpt_model, build_model_chunks, resolve_transformer_impl
from .family import ConfigError, ModelFamily
from .hf_config import (
    check_model_size,
    check_tensor_parallel,
    dims_of,
    family_of,
    load_hf_config,
    pipeline_split,
    transformer_config_from_hf,
)
from .qwen2 import QWEN2_5_SIZES
from .registry import FAMILIES

__all__ = [
    "FAMILIES",
    "QWEN2_5_SIZES",
    "ConfigError",
    "ModelFamily",
    "build_gpt_model",
    "build_model_chunks",
    "check_model_size",
    "check_tensor_parallel",
    "dims_of",
    "family_of",
    "load_hf_config",
    "pipeline_split",
    "resolve_transformer_impl",
    "transformer_config_from_hf",
]
