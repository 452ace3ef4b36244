"""The HF <-> megatron-core tensor table a model family declares, and what is derived from it.

Vocabulary used throughout:
- *global* megatron tensor: the TP1 tensor of one parameter, under its dist-checkpoint (TE-spec) name, for
  one layer. This is exactly what a ``torch_dist`` checkpoint stores (layers stacked on a leading axis),
  so every TP/PP shard of a live model is a slice of it, described by the model's own
  ``sharded_state_dict()``: filling a model never re-implements megatron's sharding rules.
- a ``TensorMapping`` row: one global megatron tensor, the HF tensors it is made of, how it is fused from
  them and split back (both directions), how the legacy per-rank layout splits it over TP, and its
  spelling in a legacy state dict of the local (non-TE) spec.

Conversion, export, verification and the legacy layout all walk a family's rows; nothing else knows a
tensor name. Only the legacy ``mp_rank_TT_PPP`` layout needs the TP rules, because there each rank stores
its local tensors under local names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
LAYER_PREFIX = "decoder.layers."
HF_LAYER_PREFIX = "model.layers.{layer}."


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


# ---------------------------------------------------------------- fusing HF tensors into one megatron tensor


class Fuse:
    """One HF tensor <-> one megatron tensor, unchanged."""

    def to_megatron(self, parts: list[torch.Tensor], dims: Dims) -> torch.Tensor:
        (tensor,) = parts
        return tensor

    def to_hf(self, tensor: torch.Tensor, dims: Dims, count: int) -> list[torch.Tensor]:
        return [tensor]


class Concat(Fuse):
    """HF tensors stacked on dim 0 (fc1 = [gate; up])."""

    def to_megatron(self, parts, dims):
        return torch.cat(parts, dim=0)

    def to_hf(self, tensor, dims, count):
        return [t.contiguous() for t in tensor.chunk(count, dim=0)]


class GroupedQKV(Fuse):
    """[q; k; v] (HF) <-> rows grouped per KV group: [q heads of g, k of g, v of g] for each g.

    Works for weights ([rows, hidden]) and biases ([rows]).
    """

    def to_megatron(self, parts, dims):
        q, k, v = parts
        g, d = dims.kv_heads, dims.head_dim
        rest = q.shape[1:]
        grouped = (q.reshape(g, -1, d, *rest), k.reshape(g, 1, d, *rest), v.reshape(g, 1, d, *rest))
        return torch.cat(grouped, dim=1).reshape(-1, *rest)

    def to_hf(self, tensor, dims, count):
        g, d = dims.kv_heads, dims.head_dim
        per_group = dims.heads // g
        rest = tensor.shape[1:]
        grouped = tensor.reshape(g, per_group + 2, d, *rest)
        q = grouped[:, :per_group].reshape(-1, *rest)
        k = grouped[:, per_group].reshape(-1, *rest)
        v = grouped[:, per_group + 1].reshape(-1, *rest)
        return [q.contiguous(), k.contiguous(), v.contiguous()]


SAME, CONCAT, GROUPED_QKV = Fuse(), Concat(), GroupedQKV()


# ---------------------------------------------------------------- legacy per-rank TP rules


class Replicated:
    """Every TP rank holds the whole tensor (norms)."""

    def split(self, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
        return [tensor.clone() for _ in range(tp)]

    def merge(self, shards: list[torch.Tensor]) -> torch.Tensor:
        return shards[0]


@dataclass(frozen=True)
class Split:
    """Contiguous blocks along ``dim``: 0 = column-parallel / vocab-parallel, 1 = row-parallel.
    The grouped qkv layout makes a contiguous row block whole KV groups."""

    dim: int

    def split(self, tensor, tp):
        if tensor.shape[self.dim] % tp:
            raise ValueError(f"dim {self.dim} of size {tensor.shape[self.dim]} does not split over TP={tp}")
        return [t.clone() for t in tensor.chunk(tp, dim=self.dim)]

    def merge(self, shards):
        return torch.cat(shards, dim=self.dim)


class GatedSplit:
    """fc1 = [gate; up]: TP rank r holds [gate_r; up_r]."""

    def split(self, tensor, tp):
        if tensor.shape[0] % (2 * tp):
            raise ValueError(f"dim 0 of size {tensor.shape[0]} does not split over TP={tp} (gate and up halves)")
        gate, up = tensor.chunk(2, dim=0)
        return [torch.cat([g, u], dim=0) for g, u in zip(gate.chunk(tp, dim=0), up.chunk(tp, dim=0))]

    def merge(self, shards):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


REPLICATED, COLUMN, ROW, GATED = Replicated(), Split(0), Split(1), GatedSplit()


# ---------------------------------------------------------------- one row of the table


@dataclass(frozen=True)
class TensorMapping:
    """One global megatron tensor and the HF tensors it is made of.

    Layer tensors (``per_layer=True``) name both sides relative to the layer: ``decoder.layers.N.`` and
    ``model.layers.N.``. ``local`` is the legacy state-dict spelling of the local (non-TE) spec where it
    differs (its norms are separate modules; its dist-checkpoint keys map back to the TE names).
    ``untied_only``: a tied model has no such HF tensor; megatron's copy comes from the embedding.
    """

    megatron: str
    hf: tuple[str, ...]
    tp: object = REPLICATED
    fuse: Fuse = SAME
    per_layer: bool = True
    local: str | None = None
    untied_only: bool = False

    def hf_names(self, layer: int | None) -> list[str]:
        prefix = HF_LAYER_PREFIX.format(layer=layer) if self.per_layer else ""
        return [prefix + name for name in self.hf]

    def to_megatron(self, read: Callable[[str], torch.Tensor], layer: int | None, dims: Dims) -> torch.Tensor:
        """The global megatron tensor, built from the HF tensors fetched by ``read``."""
        return self.fuse.to_megatron([read(n) for n in self.hf_names(layer)], dims)

    def to_hf(self, tensor: torch.Tensor, layer: int | None, dims: Dims) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.hf_names(layer), self.fuse.to_hf(tensor, dims, len(self.hf))))

    def split_for_tp(self, tensor: torch.Tensor, tp: int) -> list[torch.Tensor]:
        """Per-TP-rank tensors (each with its own storage, ready for torch.save)."""
        if tp == 1:
            return [tensor.clone()]
        try:
            return self.tp.split(tensor, tp)
        except ValueError as e:
            raise ValueError(f"{self.megatron}: {e}") from None

    def merge_from_tp(self, shards: list[torch.Tensor]) -> torch.Tensor:
        return shards[0] if len(shards) == 1 else self.tp.merge(shards)

    def legacy_name(self, use_te: bool) -> str:
        return self.megatron if use_te or self.local is None else self.local


# ---------------------------------------------------------------- legacy layer order (module order of each spec)

# A legacy state dict lists a layer's entries in module order; "*._extra_state" entries are None (they
# carry FP8 metadata only with TE) but must be present for a strict load_state_dict. The order of a
# family's tensors inside one module is the order of its table.
_SPEC_MODULES = {
    True: ("self_attention.core_attention", "self_attention.linear_proj", "self_attention.linear_qkv",
           "self_attention.q_layernorm", "self_attention.k_layernorm", "mlp.linear_fc1", "mlp.linear_fc2"),
    False: ("input_layernorm", "self_attention.core_attention", "self_attention.linear_proj",
            "self_attention.linear_qkv", "self_attention.q_layernorm", "self_attention.k_layernorm",
            "pre_mlp_layernorm", "mlp.linear_fc1", "mlp.linear_fc2"),
}
_WITH_EXTRA_STATE = {
    True: {"self_attention.core_attention", "self_attention.linear_proj", "self_attention.linear_qkv",
           "mlp.linear_fc1", "mlp.linear_fc2"},
    False: {"self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1", "mlp.linear_fc2"},
}


def legacy_layer_entries(layer_tensors, use_te: bool) -> list[tuple[str, TensorMapping | None]]:
    """(layer-relative state-dict name, its row or None for an ``_extra_state`` entry), in module order."""
    out = []
    for module in _SPEC_MODULES[use_te]:
        for t in layer_tensors:
            if t.legacy_name(use_te).rsplit(".", 1)[0] == module:
                out.append((t.legacy_name(use_te), t))
        if module in _WITH_EXTRA_STATE[use_te]:
            out.append((module + "._extra_state", None))
    placed = {t for _, t in out if t is not None}
    if placed != set(layer_tensors):  # a new module name must be placed in _SPEC_MODULES
        missing = [t.megatron for t in layer_tensors if t not in placed]
        raise ValueError(f"no legacy module order for {missing}")
    return out


# ---------------------------------------------------------------- whole-model walks


def hf_from_megatron(family, get: Callable[[str, int | None], torch.Tensor], dims: Dims) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for the whole model, streaming.

    Parameter-major (one megatron tensor over all layers, then the next): a torch_dist source reads a
    stacked key in one piece, so this order holds one key in memory at a time. HF files don't care
    about tensor order (the index maps names to shards).
    """
    globals_ = [t for t in family.global_tensors if not (t.untied_only and dims.tied)]  # tied stays tied:
    first = [t for t in globals_ if t.megatron == EMBEDDING]  # HF re-ties lm_head to the embedding on load
    for t in first:
        yield from t.to_hf(get(t.megatron, None), None, dims)
    for t in family.layer_tensors:
        for layer in range(dims.num_layers):
            yield from t.to_hf(get(t.megatron, layer), layer, dims)
    for t in globals_:
        if t.megatron != EMBEDDING:
            yield from t.to_hf(get(t.megatron, None), None, dims)


def hf_tensor_count(family, dims: Dims) -> int:
    per_layer = sum(len(t.hf) for t in family.layer_tensors)
    global_ = sum(len(t.hf) for t in family.global_tensors if not (t.untied_only and dims.tied))
    return per_layer * dims.num_layers + global_


class HFSource:
    """Global megatron tensors computed on demand from an HF reader (anything with ``get(name)``)."""

    def __init__(self, reader, family, dims: Dims):
        self.reader, self.family, self.dims = reader, family, dims
        self._last: tuple | None = None  # fc1's two TP halves ask for the same tensor back to back

    def get(self, key: str, layer: int | None = None) -> torch.Tensor:
        if self._last is not None and self._last[0] == (key, layer):
            return self._last[1]
        t = self.family.tensor(key, per_layer=layer is not None)
        if t.untied_only and self.dims.tied:
            t = self.family.tensor(EMBEDDING, per_layer=False)
        value = t.to_megatron(self.reader.get, layer, self.dims)
        self._last = ((key, layer), value)
        return value
