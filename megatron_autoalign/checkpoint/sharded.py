"""Filling a model's (or a meta model's) sharded state dict from a *source* of global megatron tensors.

A source is anything with ``family``, ``dims`` and ``get(key, layer) -> global tensor`` (HF weights through
the family's table, a legacy checkpoint, a torch_dist checkpoint); see ``models/tensor_map.py`` for what
a global tensor is. Each ShardedTensor takes its slice, as the model's own ``sharded_state_dict()``
describes it, so filling never re-implements megatron's sharding rules.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

from ..models.family import ModelFamily
from ..models.hf_config import dims_of, family_of
from ..models.tensor_map import LAYER_PREFIX, Dims, HFSource
from .safetensors_io import HFReader


class Source(Protocol):
    family: ModelFamily
    dims: Dims

    def get(self, key: str, layer: int | None = None) -> torch.Tensor: ...


def split_sharded_key(sh) -> tuple[str, int | None, tuple[int, ...]]:
    """(global key without the layer prefix, global layer or None, offsets inside the global tensor)."""
    offsets = tuple(sh.global_offset)
    if sh.key.startswith(LAYER_PREFIX) and sh.prepend_axis_num == 1:
        return sh.key[len(LAYER_PREFIX):], offsets[0], offsets[1:]
    if sh.prepend_axis_num:
        raise ValueError(f"unexpected sharded tensor layout for {sh.key} (prepend axes {sh.prepend_axis_num})")
    return sh.key, None, offsets


def _iter_sharded_tensors(tree) -> Iterator[ShardedTensor]:
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _iter_sharded_tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _iter_sharded_tensors(v)
    elif isinstance(tree, ShardedTensor):
        yield tree


def fill_sharded_state_dict(sharded_state_dict: dict, source: Source, replace_data: bool = False, progress=None) -> dict:
    """Give every ShardedTensor its slice of the matching global tensor from ``source``.

    ``replace_data=False`` copies into the existing data in place (a live model's parameters, fc1
    halves being views of the parameter); ``replace_data=True`` swaps in fresh tensors of the
    ShardedTensor's dtype (used with a model built on the meta device, so only the slices exist).
    Factories are applied first; the (possibly modified) state dict is returned.
    """
    apply_factories(sharded_state_dict)

    def order(sh):  # layer by layer, so a streaming source reads each layer once
        layer = split_sharded_key(sh)[1]
        return (-1 if layer is None else layer, sh.key)

    shards = sorted(_iter_sharded_tensors(sharded_state_dict), key=order)
    for sh in progress(shards) if progress else shards:
        if sh.flattened_range is not None:
            raise ValueError(f"{sh.key}: flattened (optimizer) shards are not model weights")
        key, layer, offsets = split_sharded_key(sh)
        full = source.get(key, layer)
        expected = tuple(sh.global_shape[sh.prepend_axis_num:])
        if tuple(full.shape) != expected:
            raise ValueError(f"{sh.key} (layer {layer}): source has shape {tuple(full.shape)}, model expects {expected}")
        piece = full[tuple(slice(o, o + n) for o, n in zip(offsets, sh.local_shape))]
        if replace_data:
            # A tensor owning its whole storage is written as is (a whole source tensor: no second copy);
            # a slice gets storage of its own, since dist_checkpointing clones views (doubling memory).
            owns_storage = piece.is_contiguous() and piece.untyped_storage().nbytes() == piece.numel() * piece.element_size()
            sh.data = piece if piece.dtype == sh.data.dtype and owns_storage else piece.to(sh.data.dtype, copy=True).contiguous()
        else:
            with torch.no_grad():
                sh.data.copy_(piece)
    return sharded_state_dict


def layout_of_model(model) -> tuple[ModelFamily, Dims]:
    """The family (set by the builder) and shapes of a live GPTModel chunk."""
    c = model.config
    dims = Dims(c.num_layers, c.hidden_size, c.ffn_hidden_size, c.num_attention_heads,
                c.num_query_groups, c.kv_channels, model.vocab_size, model.share_embeddings_and_output_weights)
    return model.family, dims


def load_hf_weights_into_model(model, hf_dir_or_reader) -> None:
    """Fill a live GPTModel chunk (any TP/PP stage, VPP chunk) from HF safetensors, tensor by tensor.

    Only tensors this rank holds are read; each rank takes its slice through ``model.sharded_state_dict()``.
    """
    reader = HFReader(hf_dir_or_reader) if isinstance(hf_dir_or_reader, str) else hf_dir_or_reader
    if hasattr(reader, "config"):
        family, dims = family_of(reader.config), dims_of(reader.config)
    else:
        family, dims = layout_of_model(model)
    fill_sharded_state_dict(model.sharded_state_dict(), HFSource(reader, family, dims))
