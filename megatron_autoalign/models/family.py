"""What a model family declares, once: its HF identity, named sizes, TransformerConfig fields and tensor table.

A family lives in its own folder (``models/qwen2/``, ``models/qwen3/``) and is listed in ``registry.py``.
Everything else (config checks, the GPT builder, conversion, export, verification, the legacy layout)
reads the family of an HF ``config.json`` from the registry and walks its declaration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .tensor_map import TensorMapping


class ConfigError(ValueError):
    """A config that this toolkit cannot build or that disagrees with the requested size."""


@dataclass(frozen=True)
class ModelSize:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None  # None: hidden_size / heads (Qwen2); Qwen3 sets it independently


@dataclass(frozen=True)
class ModelFamily:
    """``config_fields(hf_config)``: the family's own TransformerConfig fields (qkv bias, q/k norm, ...);
    the builder derives the layer spec from the TransformerConfig, so these also choose the spec."""

    name: str  # what users type before a size: "qwen3-8B"
    display: str
    model_type: str  # HF config.json "model_type"
    architectures: tuple[str, ...]
    sizes: dict[str, ModelSize]
    global_tensors: tuple[TensorMapping, ...]
    layer_tensors: tuple[TensorMapping, ...]
    config_fields: Callable[[dict], dict]
    aliases: tuple[str, ...] = ()
    _index: dict = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        index = {(t.megatron, t.per_layer): t for t in self.global_tensors + self.layer_tensors}
        object.__setattr__(self, "_index", index)

    def tensor(self, megatron_name: str, per_layer: bool) -> TensorMapping:
        try:
            return self._index[(megatron_name, per_layer)]
        except KeyError:
            where = "per-layer" if per_layer else "global"
            raise KeyError(f"{self.display} has no {where} megatron tensor {megatron_name}") from None
