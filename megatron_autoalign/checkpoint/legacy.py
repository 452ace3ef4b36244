"""Legacy ``torch`` checkpoints: ``<iter>/mp_rank_TT[_PPP]/model_optim_rng.pt``.

Each file is ``{"model": <that rank's state_dict>, "args", "checkpoint_version": 3.0, "iteration"}``
with stage-local layer numbers and TP-local tensors, spelled for the TE spec (USE_TE=true: norms fused
into ``linear_qkv``/``linear_fc1``) or the local spec (``input_layernorm``/``pre_mlp_layernorm``).
The reader accepts both spellings and any TP/PP and serves global tensors (see ``models/tensor_map.py``).
Names, TP rules and the layer order come from the model family's tensor table.
"""

from __future__ import annotations

import glob
import os
import re

import torch

from ..models.family import ModelFamily
from ..models.hf_config import stage_layers
from ..models.tensor_map import EMBEDDING, FINAL_NORM, LAYER_PREFIX, OUTPUT, Dims, legacy_layer_entries
from .errors import CheckpointError

FILE = "model_optim_rng.pt"


def rank_dir(iter_dir: str, tp_rank: int, pp_rank: int, pp: int) -> str:
    name = f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return os.path.join(iter_dir, name)


def save_legacy(source, hf_config: dict, iter_dir: str, dtype: torch.dtype, tp: int, pp: int,
                use_te: bool, common: dict, progress=None) -> None:
    """One file per (TP, PP) rank; one pipeline stage in memory at a time."""
    dims: Dims = source.dims
    family: ModelFamily = source.family
    stages = stage_layers(hf_config, pp)
    entries = legacy_layer_entries(family.layer_tensors, use_te)
    for pp_rank in progress(range(pp)) if progress else range(pp):
        layers = stages[pp_rank]
        models: list[dict] = [dict() for _ in range(tp)]

        def put(name: str, key: str, layer: int | None = None):
            mapping = family.tensor(key, per_layer=layer is not None)
            for sd, t in zip(models, mapping.split_for_tp(source.get(key, layer).to(dtype), tp)):
                sd[name] = t

        if pp_rank == 0:
            put(EMBEDDING, EMBEDDING)
        for local, layer in enumerate(layers):
            prefix = f"{LAYER_PREFIX}{local}."
            for name, mapping in entries:
                if mapping is None:  # an _extra_state entry
                    for sd in models:
                        sd[prefix + name] = None
                else:
                    put(prefix + name, mapping.megatron, layer)
        if pp_rank == pp - 1:
            put(FINAL_NORM, FINAL_NORM)
            if not dims.tied or pp > 1:  # tied + PP>1: the last stage keeps its copy of the embedding
                put(OUTPUT, OUTPUT)
            for sd in models:
                sd["output_layer._extra_state"] = None
        for tp_rank, sd in enumerate(models):
            d = rank_dir(iter_dir, tp_rank, pp_rank, pp)
            os.makedirs(d, exist_ok=True)
            torch.save({"model": sd, **common}, os.path.join(d, FILE))
        del models


class LegacySource:
    """Global tensors from a legacy checkpoint of any TP/PP and either spelling.

    Files are opened with ``mmap=True``: only the tensors asked for are paged in.
    """

    def __init__(self, iter_dir: str, family: ModelFamily, dims: Dims):
        self.iter_dir, self.family, self.dims = iter_dir, family, dims
        found = {}
        for path in glob.glob(os.path.join(iter_dir, "mp_rank_*", FILE)):
            m = re.fullmatch(r"mp_rank_(\d+)(?:_(\d+))?", os.path.basename(os.path.dirname(path)))
            if m:
                found[(int(m.group(1)), int(m.group(2) or 0))] = path
        if not found:
            raise CheckpointError(f"{iter_dir}: no mp_rank_*/{FILE} files")
        self.tp = 1 + max(t for t, _ in found)
        self.pp = 1 + max(p for _, p in found)
        missing = [(t, p) for t in range(self.tp) for p in range(self.pp) if (t, p) not in found]
        if missing:
            t, p = missing[0]
            raise CheckpointError(f"{rank_dir(iter_dir, t, p, self.pp)}/{FILE}: shard file is missing")
        self.models = {}
        for (t, p), path in found.items():
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
            except Exception as e:  # a truncated or foreign file: one clear line instead of a pickle trace
                raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})") from None
            if "model" not in state:
                raise CheckpointError(f"{path}: no 'model' entry (virtual-pipeline 'model0'.. checkpoints are not supported)")
            self.models[(t, p)] = state["model"]
        # stage-local layer counts -> global offsets
        counts = []
        for p in range(self.pp):
            ids = {int(k[len(LAYER_PREFIX):].split(".")[0]) for k in self.models[(0, p)] if k.startswith(LAYER_PREFIX)}
            counts.append(len(ids))
        if sum(counts) != dims.num_layers:
            raise CheckpointError(f"{iter_dir}: checkpoint holds {sum(counts)} layers, config.json says {dims.num_layers}")
        self.stage_of = {}
        start = 0
        for p, n in enumerate(counts):
            for local in range(n):
                self.stage_of[start + local] = (p, local)
            start += n

    def _shards(self, stage: int, name: str) -> list[torch.Tensor]:
        out = []
        for t in range(self.tp):
            sd = self.models[(t, stage)]
            if name not in sd:
                path = os.path.join(rank_dir(self.iter_dir, t, stage, self.pp), FILE)
                raise CheckpointError(f"{path}: tensor {name} is missing")
            out.append(sd[name])
        return out

    def get(self, key: str, layer: int | None = None) -> torch.Tensor:
        if layer is None:
            if key == EMBEDDING or (key == OUTPUT and self.dims.tied):
                return self.family.tensor(EMBEDDING, False).merge_from_tp(self._shards(0, EMBEDDING))
            return self.family.tensor(key, False).merge_from_tp(self._shards(self.pp - 1, key))
        mapping = self.family.tensor(key, per_layer=True)
        stage, local = self.stage_of[layer]
        sd = self.models[(0, stage)]
        name = f"{LAYER_PREFIX}{local}.{key}"
        if name not in sd:  # local-spec spelling
            name = f"{LAYER_PREFIX}{local}.{mapping.legacy_name(use_te=False)}"
        return mapping.merge_from_tp(self._shards(stage, name))
