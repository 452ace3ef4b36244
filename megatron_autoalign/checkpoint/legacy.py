"""Legacy ``torch`` checkpoints: ``<iter>/mp_rank_TT[_PPP]/model_optim_rng.pt``.

Each file is ``{"model": <that rank's state_dict>, "args", "checkpoint_version": 3.0, "iteration"}``
with stage-local layer numbers and TP-local tensors, spelled for the TE spec (USE_TE=true: norms fused
into ``linear_qkv``/``linear_fc1``) or the local spec (``input_layernorm``/``pre_mlp_layernorm``).
The reader accepts both spellings and any TP/PP and serves global tensors (see ``qwen2_mapping``).
"""

from __future__ import annotations

import glob
import os
import re

import torch

from ..models.qwen2_mapping import (
    ATTN_NORM, EMBEDDING, FC1, FC2, FINAL_NORM, LAYER_PREFIX, MLP_NORM, OUTPUT, PROJ, QKV_B, QKV_W, Dims,
    legacy_name, merge_from_tp, split_for_tp, stage_layers,
)
from .errors import CheckpointError

FILE = "model_optim_rng.pt"
# One layer's state-dict entries in module order; "*._extra_state" entries are None (they carry FP8
# metadata only with TE) but must be present for a strict load_state_dict.
_LAYER_ORDER = {
    False: (ATTN_NORM, PROJ, "self_attention.linear_proj._extra_state", QKV_W, QKV_B,
            "self_attention.linear_qkv._extra_state", MLP_NORM, FC1, "mlp.linear_fc1._extra_state", FC2,
            "mlp.linear_fc2._extra_state"),
    True: ("self_attention.core_attention._extra_state", PROJ, "self_attention.linear_proj._extra_state",
           ATTN_NORM, QKV_W, QKV_B, "self_attention.linear_qkv._extra_state", MLP_NORM, FC1,
           "mlp.linear_fc1._extra_state", FC2, "mlp.linear_fc2._extra_state"),
}


def rank_dir(iter_dir: str, tp_rank: int, pp_rank: int, pp: int) -> str:
    name = f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return os.path.join(iter_dir, name)


def save_legacy(source, hf_config: dict, iter_dir: str, dtype: torch.dtype, tp: int, pp: int,
                use_te: bool, common: dict, progress=None) -> None:
    """One file per (TP, PP) rank; one pipeline stage in memory at a time."""
    dims: Dims = source.dims
    stages = stage_layers(hf_config, pp)
    for pp_rank in progress(range(pp)) if progress else range(pp):
        layers = stages[pp_rank]
        models: list[dict] = [dict() for _ in range(tp)]

        def put(name: str, key: str, layer: int | None = None):
            for sd, t in zip(models, split_for_tp(key, source.get(key, layer).to(dtype), tp)):
                sd[name] = t

        if pp_rank == 0:
            put(EMBEDDING, EMBEDDING)
        for local, layer in enumerate(layers):
            prefix = f"{LAYER_PREFIX}{local}."
            for key in _LAYER_ORDER[use_te]:
                if key.endswith("._extra_state"):
                    for sd in models:
                        sd[prefix + key] = None
                else:
                    put(prefix + legacy_name(key, use_te), key, layer)
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

    def __init__(self, iter_dir: str, dims: Dims):
        self.iter_dir, self.dims = iter_dir, dims
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
                return merge_from_tp(EMBEDDING, self._shards(0, EMBEDDING))
            return merge_from_tp(key, self._shards(self.pp - 1, key))
        stage, local = self.stage_of[layer]
        sd = self.models[(0, stage)]
        name = f"{LAYER_PREFIX}{local}.{key}"
        if name not in sd:  # local-spec spelling
            name = f"{LAYER_PREFIX}{local}.{legacy_name(key, use_te=False)}"
        return merge_from_tp(key, self._shards(stage, name))
