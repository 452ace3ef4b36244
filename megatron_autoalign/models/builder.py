"""Build a megatron-core GPTModel for a Qwen2 HF config.

Transformer Engine's layer spec when TE imports (fused kernels), otherwise megatron-core's local spec
with this project's ``DocumentCausalAttention`` and sequence-parallel-aware ``RMSNorm``.
"""

from __future__ import annotations

import copy

from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from .attention import DocumentCausalAttention
from .linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from .mlp import Qwen2MLP
from .norm import HeadRMSNorm, RMSNorm
from .family import ConfigError
from .hf_config import family_of, rope_theta, size_of


class _DeferredLogitsOutputLayer(tensor_parallel.ColumnParallelLinear):
    """The output layer; while ``defer_logits`` is set it hands the hidden states through unprojected."""

    defer_logits = False

    def forward(self, input_, weight=None, runtime_gather_output=None):
        if self.defer_logits:
            return input_, None
        return super().forward(input_, weight=weight, runtime_gather_output=runtime_gather_output)


class Qwen2GPTModel(GPTModel):
    """megatron-core GPTModel whose training loss never materialises full-vocabulary logits.

    With labels, the output projection and the cross-entropy run together, chunk by chunk
    (``linear_cross_entropy``); without labels the model returns logits as usual.
    """

    def __init__(self, *args, fused_linear_cross_entropy: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_linear_cross_entropy = fused_linear_cross_entropy and self.post_process
        if self.fused_linear_cross_entropy:
            self.output_layer.__class__ = _DeferredLogitsOutputLayer

    def forward(self, *args, labels=None, **kwargs):
        defer = self.fused_linear_cross_entropy and labels is not None
        if defer:
            self.output_layer.defer_logits = True
        try:
            return super().forward(*args, labels=labels, **kwargs)
        finally:
            if defer:
                self.output_layer.defer_logits = False

    def compute_language_model_loss(self, labels, logits):
        if not (self.fused_linear_cross_entropy and self.output_layer.defer_logits):
            return super().compute_language_model_loss(labels, logits)
        hidden = logits  # [s, b, h]: the output layer deferred its projection to here
        if self.output_layer.sequence_parallel:
            hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
        else:
            hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
        weight = (
            self.shared_embedding_or_output_weight()
            if self.share_embeddings_and_output_weights
            else self.output_layer.weight
        )
        seq, batch = hidden.shape[0], hidden.shape[1]
        flat_labels = labels.transpose(0, 1).reshape(-1)
        # Only tokens with a target pay for the 152k-wide projection (prompts, padding and DPO prompt
        # tokens are -100); their loss is 0 and their hidden-state gradient is 0 either way.
        trained = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        selected = linear_cross_entropy(
            hidden.reshape(seq * batch, -1).index_select(0, trained),
            weight,
            flat_labels.index_select(0, trained),
            vocab_start=parallel_state.get_tensor_model_parallel_rank() * weight.shape[0],
            tp_group=parallel_state.get_tensor_model_parallel_group(),
            into_main_grad=self.config.gradient_accumulation_fusion,
        )
        losses = selected.new_zeros(seq * batch).index_copy(0, trained, selected)
        return losses.view(seq, batch).transpose(0, 1).contiguous()


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


def layer_spec(
    config,
    transformer_impl: str = "local",
    vp_stage: int | None = None,
    rotary_base: float = 1e6,
    recompute_activation: bool | int = False,
):
    """Block submodules for this pipeline stage.

    In the local spec RoPE is applied by ``DocumentCausalAttention`` (fused, from per-document positions),
    so the GPTModel around it is built without megatron's own RoPE (``position_embedding_type``), and
    the MLP can recompute its SwiGLU output in the backward instead of keeping it (``Qwen2MLP``).
    The family's TransformerConfig chooses the rest: ``qk_layernorm`` (Qwen3) adds a norm over each q and
    k head (TE's norm, or ``HeadRMSNorm`` in the local spec).
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if transformer_impl == "transformer_engine":
        if recompute_activation:
            # Qwen2MLP's storage release/refill is proven on the local spec's linears only; TE's fc2 may
            # keep its own (e.g. FP8) copy of the activation. Refused rather than silently ignored.
            raise ConfigError(
                "--recompute-swiglu works with the local spec only, but Transformer Engine was chosen; "
                "add --transformer-impl local, or drop --recompute-swiglu"
            )
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=config.qk_layernorm)
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
        if config.qk_layernorm:
            spec.submodules.self_attention.submodules.q_layernorm = HeadRMSNorm
            spec.submodules.self_attention.submodules.k_layernorm = HeadRMSNorm
        spec.submodules.self_attention.submodules.core_attention = ModuleSpec(
            module=DocumentCausalAttention, params={"rotary_base": rotary_base}
        )
        spec.submodules.mlp.module = Qwen2MLP
        final_norm = RMSNorm
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    if transformer_impl == "transformer_engine":
        return TransformerBlockSubmodules(layer_specs=[spec] * num_layers, layer_norm=final_norm)
    # recompute_activation: True for every layer, an int N for the model's first N layers.
    limit = config.num_layers if recompute_activation is True else int(recompute_activation or 0)
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    variants = {}
    for recompute in (False, True):
        variants[recompute] = copy.deepcopy(spec)
        variants[recompute].submodules.mlp.params = {"recompute_activation": recompute}
    layer_specs = [variants[offset + i < limit] for i in range(num_layers)]
    return TransformerBlockSubmodules(layer_specs=layer_specs, layer_norm=final_norm)


def build_gpt_model(
    hf_config: dict,
    config,
    transformer_impl: str = "local",
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    max_sequence_length: int | None = None,
    fused_linear_cross_entropy: bool = True,
    recompute_activation: bool | int = False,
) -> GPTModel:
    """A GPTModel chunk for this rank's pipeline stage (``pre_process``/``post_process`` default to it).

    ``recompute_activation``: the local spec's MLP recomputes its SwiGLU output in the backward, in every
    layer (True) or in the model's first N layers (an int N).
    """
    if hf_config.get("use_sliding_window"):
        raise ConfigError("sliding-window attention (use_sliding_window=true) is not supported")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    size = size_of(hf_config)
    theta = rope_theta(hf_config)
    model = Qwen2GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(
            config, transformer_impl, vp_stage, rotary_base=theta, recompute_activation=recompute_activation
        ),
        vocab_size=size.vocab_size,
        max_sequence_length=max_sequence_length or hf_config.get("max_position_embeddings", 32768),
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=size.tie_word_embeddings,
        position_embedding_type="rope" if transformer_impl == "transformer_engine" else "none",
        rotary_base=theta,
        vp_stage=vp_stage,
        fused_linear_cross_entropy=fused_linear_cross_entropy,
    )
    model.family = family_of(hf_config)  # checkpoint readers map tensors through the family's table
    return model


def build_model_chunks(hf_config: dict, config, transformer_impl: str = "local", **kwargs) -> list[GPTModel]:
    """One chunk per virtual pipeline stage (a single chunk without virtual PP)."""
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    if not vpp or vpp == 1:
        return [build_gpt_model(hf_config, config, transformer_impl, **kwargs)]
    return [build_gpt_model(hf_config, config, transformer_impl, vp_stage=i, **kwargs) for i in range(vpp)]
