"""Build a megatron-core GPTModel for a Qwen2 HF config.

Transformer Engine's layer spec when TE imports (fused kernels), otherwise megatron-core's local spec
with this project's ``DocumentCausalAttention`` and sequence-parallel-aware ``RMSNorm``.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from .attention import DocumentCausalAttention
from .norm import RMSNorm
from .qwen2 import ConfigError, rope_theta, size_of


def transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401

        return True
    except Exception:
        return False


def resolve_transformer_impl(requested: str = "auto") -> str:
    """'transformer_engine' or 'local'; 'auto' picks TE when it imports."""
    if requested == "auto":
        return "transformer_engine" if transformer_engine_available() else "local"
    if requested == "transformer_engine" and not transformer_engine_available():
        raise ConfigError("--transformer-impl transformer_engine requested but Transformer Engine is not installed")
    if requested not in ("local", "transformer_engine"):
        raise ConfigError(f"unknown transformer impl {requested!r}; use local, transformer_engine or auto")
    return requested


def layer_spec(config, transformer_impl: str = "local", vp_stage: int | None = None):
    """Block submodules for this pipeline stage."""
    from megatron.core.models.gpt import gpt_layer_specs

    if transformer_impl == "transformer_engine":
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
        spec.submodules.self_attention.submodules.core_attention = ModuleSpec(module=DocumentCausalAttention)
        final_norm = RMSNorm
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[spec] * num_layers, layer_norm=final_norm)


def build_gpt_model(
    hf_config: dict,
    config,
    transformer_impl: str = "local",
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    max_sequence_length: int | None = None,
) -> GPTModel:
    """A GPTModel chunk for this rank's pipeline stage (``pre_process``/``post_process`` default to it)."""
    if hf_config.get("use_sliding_window"):
        raise ConfigError("sliding-window attention (use_sliding_window=true) is not supported")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    size = size_of(hf_config)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config, transformer_impl, vp_stage),
        vocab_size=size.vocab_size,
        max_sequence_length=max_sequence_length or hf_config.get("max_position_embeddings", 32768),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=size.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=rope_theta(hf_config),
        vp_stage=vp_stage,
    )


def build_model_chunks(hf_config: dict, config, transformer_impl: str = "local") -> list[GPTModel]:
    """One chunk per virtual pipeline stage (a single chunk without virtual PP)."""
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    if not vpp or vpp == 1:
        return [build_gpt_model(hf_config, config, transformer_impl)]
    return [build_gpt_model(hf_config, config, transformer_impl, vp_stage=i) for i in range(vpp)]


def model_dtype_of(config) -> torch.dtype:
    return config.params_dtype
