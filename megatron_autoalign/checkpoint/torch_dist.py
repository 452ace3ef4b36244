"""``torch_dist`` (megatron-core dist_checkpointing) checkpoints: write from a source, read back.

Writing builds a TP1PP1 GPTModel on the *meta* device only for its ``sharded_state_dict()``: the exact
keys, global shapes and ShardedObjects megatron (and Megatron-LM, which saves
``{"model": model.sharded_state_dict(), "args", "checkpoint_version", "iteration", ...}``) expects.
Each ShardedTensor then receives its tensor from the source, a part (a few layers) at a time: the
parts are saved separately and merged (``torch_dist_parts``), so memory does not grow with depth.
Such a checkpoint loads at any TP/PP, into a local-spec or a Transformer Engine model.
"""

from __future__ import annotations

import os

import torch

from ..models.family import ModelFamily
from ..models.tensor_map import LAYER_PREFIX, Dims
from .errors import CheckpointError
from .sharded import fill_sharded_state_dict


def ensure_process_group() -> None:
    """dist_checkpointing needs torch.distributed; a plain process becomes a world of one (gloo)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from ..runtime import init_distributed

    if not dist.is_initialized() or not parallel_state.model_parallel_is_initialized():
        init_distributed(1, 1)


def meta_model(hf_config: dict, dtype: torch.dtype):
    from ..models import build_gpt_model, transformer_config_from_hf

    config = transformer_config_from_hf(hf_config, dtype, perform_initialization=False)
    with torch.device("meta"):
        return build_gpt_model(hf_config, config, pre_process=True, post_process=True)


TE_FINAL_NORM_EXTRA_STATE = "decoder.final_layernorm._extra_state"


def add_te_extra_state(model_sharded_state_dict: dict, replica_id=0) -> dict:
    """Add the one entry a Transformer Engine model asks for that a local-spec model does not write.

    TE's RMSNorm (the TE spec's final norm) keeps ``_extra_state`` (FP8 metadata); a TE-spec model
    requests ``decoder.final_layernorm._extra_state`` and a strict load fails without it. TE reads None
    as "no state" (its ``set_extra_state`` returns early), which is what the local spec's linear layers
    store for their own ``_extra_state`` too. Only added where the dict holds the final norm (last stage).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    if "decoder.final_layernorm.weight" in model_sharded_state_dict:
        model_sharded_state_dict.setdefault(
            TE_FINAL_NORM_EXTRA_STATE, ShardedObject(TE_FINAL_NORM_EXTRA_STATE, None, (1,), (0,), replica_id=replica_id))
    return model_sharded_state_dict


def save_torch_dist(source, hf_config: dict, iter_dir: str, dtype: torch.dtype, common: dict, progress=None,
                    part_bytes: int = 2**30) -> int:
    """Write ``{"model": <sharded state dict filled from source>, **common}`` to ``iter_dir``, streaming.

    The model's entries are written in parts of about ``part_bytes`` (whole layers, at least one; each
    global tensor alone), every part by ``dist_checkpointing.save`` into a scratch folder, then merged
    into one checkpoint (``torch_dist_parts``). Peak memory is one part plus the source's working set,
    whatever the depth. Returns the number of parts.
    """
    import shutil

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import apply_factories
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    from .torch_dist_parts import merge_parts, plan_parts, rebase_layers

    ensure_process_group()
    model_sd = add_te_extra_state(meta_model(hf_config, dtype).sharded_state_dict())
    apply_factories(model_sd)
    parts = plan_parts(model_sd, part_bytes)
    scratch = iter_dir + ".parts"
    shutil.rmtree(scratch, ignore_errors=True)
    part_dirs = []
    try:
        for i, (keys, first) in enumerate(progress(parts) if progress else parts):
            state = {"model": fill_sharded_state_dict({k: model_sd.pop(k) for k in keys}, source, replace_data=True)}
            if first is not None:
                rebase_layers(state["model"], first)
            if i == 0:
                state.update(common)
            part_dirs.append(os.path.join(scratch, f"part_{i:05d}"))
            os.makedirs(part_dirs[-1])
            # Each part covers only some layers of the stacked tensors: the whole is checked after the merge.
            dist_checkpointing.save(state, part_dirs[-1], validate_access_integrity=False,
                                    sharded_strategy=get_default_save_sharded_strategy("torch_dist"))
            del state  # the part's tensors are freed here; nothing else references them
        merge_parts(part_dirs, [first for _, first in parts], source.dims.num_layers, iter_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return len(parts)


def load_torch_dist_into_chunks(model_chunks: list, iter_dir: str, strict: bool = True) -> None:
    """Load model weights into live chunks at any TP/PP/VPP (what Megatron-LM's loader does)."""
    from megatron.core import dist_checkpointing

    names = ["model"] if len(model_chunks) == 1 else [f"model{i}" for i in range(len(model_chunks))]
    # ShardedTensor keys are global, so every chunk reads from the same tensors whatever its dict key.
    request = {n: c.sharded_state_dict() for n, c in zip(names, model_chunks)}
    loaded = dist_checkpointing.load(request, iter_dir, validate_access_integrity=False)
    for n, c in zip(names, model_chunks):
        c.load_state_dict(loaded[n], strict=strict)


class TorchDistSource:
    """Global tensors of a torch_dist checkpoint, read one stacked key (all layers) at a time.

    No model is needed: ShardedTensor templates are enough for dist_checkpointing to read a key.
    A key is read whole because single-process loading must cover every fragment of the layer axis
    (megatron's torch_dist strategy places fragments it does not hold on rank+1, i.e. on us).
    Memory: the largest stacked key (fc1) plus what the caller keeps.
    """

    def __init__(self, iter_dir: str, family: ModelFamily, dims: Dims):
        from megatron.core import dist_checkpointing

        ensure_process_group()
        self.iter_dir, self.family, self.dims = iter_dir, family, dims
        self.meta = dist_checkpointing.load_tensors_metadata(iter_dir)
        for key in (LAYER_PREFIX + t.megatron for t in family.layer_tensors):
            if key not in self.meta:
                raise CheckpointError(f"{iter_dir}: tensor {key} is missing from the checkpoint")
            if self.meta[key].global_shape[0] != dims.num_layers:
                raise CheckpointError(
                    f"{iter_dir}: {key} has {self.meta[key].global_shape[0]} layers, config.json says {dims.num_layers}"
                )
        self._key: str | None = None
        self._layers: list[torch.Tensor] = []

    def _load(self, request: dict) -> dict:
        from megatron.core import dist_checkpointing

        return dist_checkpointing.load(request, self.iter_dir, validate_access_integrity=False)

    def get(self, key: str, layer: int | None = None) -> torch.Tensor:
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        if layer is None:
            if key not in self.meta:
                raise CheckpointError(f"{self.iter_dir}: tensor {key} is missing from the checkpoint")
            meta = self.meta[key]
            template = ShardedTensor.from_rank_offsets(key, torch.empty(tuple(meta.global_shape), dtype=meta.dtype), replica_id=0)
            return self._load({key: template})[key]
        if key != self._key:
            self._key, self._layers = None, []  # release the previous key before reading the next
            full_key = LAYER_PREFIX + key
            meta = self.meta[full_key]
            shape, n = tuple(meta.global_shape[1:]), meta.global_shape[0]
            request = {
                str(l): ShardedTensor.from_rank_offsets(
                    full_key, torch.empty(shape, dtype=meta.dtype), (0, l, n), replica_id=0, prepend_axis_num=1
                )
                for l in range(n)
            }
            loaded = self._load(request)
            self._key, self._layers = key, [loaded[str(l)] for l in range(n)]
        return self._layers[layer]

