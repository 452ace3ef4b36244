"""HF <-> megatron-core tensor mapping of the Qwen2 family: the one place that knows both layouts.

Vocabulary used throughout:
- *global* megatron tensor: the TP1 tensor of one parameter, under its dist-checkpoint (TE-spec) key, for
  one layer. This is exactly what a ``torch_dist`` checkpoint stores (layers stacked on a leading axis),
  so every TP/PP shard of a live model is a slice of it, described by the model's own
  ``sharded_state_dict()``: filling a model never re-implements megatron's sharding rules.
- *source*: anything with ``dims`` and ``get(key, layer) -> global tensor`` (HF weights, a legacy
  checkpoint, a torch_dist checkpoint).

Only the legacy ``mp_rank_TT_PPP`` layout needs explicit TP rules (``split_for_tp``/``merge_from_tp``),
because there each rank stores its local tensors under local names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch

from .qwen2 import head_dim, size_of

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
LAYER_PREFIX = "decoder.layers."

QKV_W = "self_attention.linear_qkv.weight"
QKV_B = "self_attention.linear_qkv.bias"
PROJ = "self_attention.linear_proj.weight"
FC1 = "mlp.linear_fc1.weight"
FC2 = "mlp.linear_fc2.weight"
ATTN_NORM = "self_attention.linear_qkv.layer_norm_weight"
MLP_NORM = "mlp.linear_fc1.layer_norm_weight"
LAYER_KEYS = (ATTN_NORM, QKV_W, QKV_B, PROJ, MLP_NORM, FC1, FC2)

# The local spec keeps the norms as separate modules; its sharded_state_dict maps them to TE names.
LOCAL_NAMES = {ATTN_NORM: "input_layernorm.weight", MLP_NORM: "pre_mlp_layernorm.weight"}

# Legacy per-rank split rules: (kind, dim). "gated" = fc1, whose rank r holds [gate_r; up_r].
_TP_RULES = {
    EMBEDDING: ("split", 0),
    OUTPUT: ("split", 0),
    FINAL_NORM: ("replicate", None),
    ATTN_NORM: ("replicate", None),
    MLP_NORM: ("replicate", None),
    QKV_W: ("split", 0),  # grouped layout: a contiguous row block = whole KV groups
    QKV_B: ("split", 0),
    PROJ: ("split", 1),
    FC1: ("gated", 0),
    FC2: ("split", 1),
}


@dataclass(frozen=True)
class Dims:
    num_layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "Dims":
        s = size_of(cfg)
        return cls(
            s.num_layers, s.hidden_size, s.ffn_hidden_size, s.num_attention_heads,
            s.num_key_value_heads, head_dim(cfg), s.vocab_size, s.tie_word_embeddings,
        )


class Source(Protocol):
    dims: Dims

    def get(self, key: str, layer: int | None = None) -> torch.Tensor: ...


# ---------------------------------------------------------------- pure per-tensor transforms


def qkv_hf_to_mcore(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Dims) -> torch.Tensor:
    """[q; k; v] (HF) -> rows grouped per KV group: [q heads of g, k of g, v of g] for each g.

    Works for weights ([rows, hidden]) and biases ([rows]).
    """
    g, d = dims.kv_heads, dims.head_dim
    rest = q.shape[1:]
    parts = (q.reshape(g, -1, d, *rest), k.reshape(g, 1, d, *rest), v.reshape(g, 1, d, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def qkv_mcore_to_hf(qkv: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, d = dims.kv_heads, dims.head_dim
    per_group = dims.heads // g
    rest = qkv.shape[1:]
    grouped = qkv.reshape(g, per_group + 2, d, *rest)
    q = grouped[:, :per_group].reshape(-1, *rest)
    k = grouped[:, per_group].reshape(-1, *rest)
    v = grouped[:, per_group + 1].reshape(-1, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def hf_layer_names(layer: int) -> dict[str, str]:
    p = f"model.layers.{layer}."
    return {
        "attn_norm": p + "input_layernorm.weight",
        "q": p + "self_attn.q_proj.weight",
        "k": p + "self_attn.k_proj.weight",
        "v": p + "self_attn.v_proj.weight",
        "q_b": p + "self_attn.q_proj.bias",
        "k_b": p + "self_attn.k_proj.bias",
        "v_b": p + "self_attn.v_proj.bias",
        "o": p + "self_attn.o_proj.weight",
        "mlp_norm": p + "post_attention_layernorm.weight",
        "gate": p + "mlp.gate_proj.weight",
        "up": p + "mlp.up_proj.weight",
        "down": p + "mlp.down_proj.weight",
    }


def mcore_from_hf(read: Callable[[str], torch.Tensor], key: str, layer: int | None, dims: Dims) -> torch.Tensor:
    """The global megatron tensor ``key`` (of ``layer``), built from HF tensors fetched by ``read``."""
    if layer is None:
        if key == EMBEDDING:
            return read("model.embed_tokens.weight")
        if key == FINAL_NORM:
            return read("model.norm.weight")
        if key == OUTPUT:
            return read("model.embed_tokens.weight" if dims.tied else "lm_head.weight")
        raise KeyError(f"no HF source for megatron tensor {key}")
    n = hf_layer_names(layer)
    if key == ATTN_NORM:
        return read(n["attn_norm"])
    if key == QKV_W:
        return qkv_hf_to_mcore(read(n["q"]), read(n["k"]), read(n["v"]), dims)
    if key == QKV_B:
        return qkv_hf_to_mcore(read(n["q_b"]), read(n["k_b"]), read(n["v_b"]), dims)
    if key == PROJ:
        return read(n["o"])
    if key == MLP_NORM:
        return read(n["mlp_norm"])
    if key == FC1:
        return torch.cat([read(n["gate"]), read(n["up"])], dim=0)
    if key == FC2:
        return read(n["down"])
    raise KeyError(f"no HF source for megatron tensor {LAYER_PREFIX}{key} (layer {layer})")


def hf_of_mcore(key: str, layer: int, tensor: torch.Tensor, dims: Dims) -> list[tuple[str, torch.Tensor]]:
    """HF tensors carried by one global megatron layer tensor."""
    n = hf_layer_names(layer)
    if key in (QKV_W, QKV_B):
        names = ("q", "k", "v") if key == QKV_W else ("q_b", "k_b", "v_b")
        return list(zip((n[x] for x in names), qkv_mcore_to_hf(tensor, dims)))
    if key == FC1:
        gate, up = tensor.chunk(2, dim=0)
        return [(n["gate"], gate.contiguous()), (n["up"], up.contiguous())]
    simple = {ATTN_NORM: "attn_norm", PROJ: "o", MLP_NORM: "mlp_norm", FC2: "down"}
    return [(n[simple[key]], tensor)]


def hf_from_mcore(get: Callable[[str, int | None], torch.Tensor], dims: Dims) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for the whole model, streaming.

    Parameter-major (one megatron key over all layers, then the next): a torch_dist source reads a
    stacked key in one piece, so this order holds one key in memory at a time. HF files don't care
    about tensor order (the index maps names to shards).
    """
    yield "model.embed_tokens.weight", get(EMBEDDING, None)
    for key in LAYER_KEYS:
        for layer in range(dims.num_layers):
            yield from hf_of_mcore(key, layer, get(key, layer), dims)
    yield "model.norm.weight", get(FINAL_NORM, None)
    if not dims.tied:  # tied models stay tied: HF re-ties lm_head to the embedding on load
        yield "lm_head.weight", get(OUTPUT, None)


class HFSource:
    """Global megatron tensors computed on demand from an HF reader (anything with ``get(name)``)."""

    def __init__(self, reader, dims: Dims):
        self.reader, self.dims = reader, dims
        self._last: tuple | None = None  # fc1's two TP halves ask for the same tensor back to back

    def get(self, key: str, layer: int | None = None) -> torch.Tensor:
        if self._last is not None and self._last[0] == (key, layer):
            return self._last[1]
        value = mcore_from_hf(self.reader.get, key, layer, self.dims)
        self._last = ((key, layer), value)
        return value


# ---------------------------------------------------------------- filling a sharded state dict


def split_sharded_key(sh) -> tuple[str, int | None, tuple[int, ...]]:
    """(global key without the layer prefix, global layer or None, offsets inside the global tensor)."""
    offsets = tuple(sh.global_offset)
    if sh.key.startswith(LAYER_PREFIX) and sh.prepend_axis_num == 1:
        return sh.key[len(LAYER_PREFIX):], offsets[0], offsets[1:]
    if sh.prepend_axis_num:
        raise ValueError(f"unexpected sharded tensor layout for {sh.key} (prepend axes {sh.prepend_axis_num})")
    return sh.key, None, offsets


def _iter_sharded_tensors(tree) -> Iterator:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

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
    from megatron.core.dist_checkpointing.mapping import apply_factories

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
            # own storage (not a view): dist_checkpointing clones views, which would double memory
            sh.data = piece.to(sh.data.dtype, copy=True).contiguous()
        else:
            with torch.no_grad():
                sh.data.copy_(piece)
    return sharded_state_dict


def load_hf_weights_into_model(model, hf_dir_or_reader) -> None:
    """Fill a live GPTModel chunk (any TP/PP stage, VPP chunk) from HF safetensors, tensor by tensor.

    Only tensors this rank holds are read; each rank takes its slice through ``model.sharded_state_dict()``.
    """
    from ..checkpoint.safetensors_io import HFReader

    reader = HFReader(hf_dir_or_reader) if isinstance(hf_dir_or_reader, str) else hf_dir_or_reader
    dims = Dims.from_hf_config(reader.config) if hasattr(reader, "config") else _dims_of_model(model)
    fill_sharded_state_dict(model.sharded_state_dict(), HFSource(reader, dims))


def _dims_of_model(model) -> Dims:
    c = model.config
    return Dims(c.num_layers, c.hidden_size, c.ffn_hidden_size, c.num_attention_heads,
                c.num_query_groups, c.kv_channels, model.vocab_size, model.share_embeddings_and_output_weights)


# ---------------------------------------------------------------- legacy (per-rank) layout


def split_for_tp(key: str, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
    """Per-TP-rank tensors of a global tensor (each with its own storage, ready for torch.save)."""
    kind, dim = _TP_RULES[key]
    if kind == "replicate" or tp == 1:
        return [tensor.clone() for _ in range(tp)]
    if tensor.shape[dim] % (2 * tp if kind == "gated" else tp):
        raise ValueError(f"{key}: dim {dim} of size {tensor.shape[dim]} does not split over TP={tp}")
    if kind == "gated":
        gate, up = tensor.chunk(2, dim=0)
        return [torch.cat([g, u], dim=0) for g, u in zip(gate.chunk(tp, dim=0), up.chunk(tp, dim=0))]
    return [t.clone() for t in tensor.chunk(tp, dim=dim)]


def merge_from_tp(key: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of ``split_for_tp``."""
    kind, dim = _TP_RULES[key]
    if kind == "replicate" or len(shards) == 1:
        return shards[0]
    if kind == "gated":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)


def legacy_name(key: str, use_te: bool) -> str:
    """Per-layer key as a legacy state dict spells it for the TE or the local spec."""
    return key if use_te else LOCAL_NAMES.get(key, key)



def stage_layers(hf_config: dict, pp: int) -> list[range]:
    """Global layer indices on each pipeline stage, as megatron places them (uneven splits included)."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from .qwen2 import pipeline_split, transformer_config_from_hf

    if pp == 1:
        return [range(size_of(hf_config).num_layers)]
    cfg = transformer_config_from_hf(
        hf_config, pipeline_model_parallel_size=pp, **pipeline_split(size_of(hf_config).num_layers, pp)
    )
    out = []
    for r in range(pp):
        start = get_transformer_layer_offset(cfg, pp_rank=r)
        out.append(range(start, start + get_num_layers_to_build(cfg, pp_rank=r)))
    return out
