"""Writing one torch_dist checkpoint in parts, so that a 72B conversion never holds the whole model.

``dist_checkpointing.save`` stages every tensor it is given before writing, so its peak memory is the
state dict. A converted checkpoint is therefore saved part by part (a few layers each) into scratch
folders, and the parts are merged into one checkpoint: their data files are moved next to each other
and their torch.distributed.checkpoint metadata (``.metadata``: for each key its global shape and saved
chunks, and where each chunk's bytes live) is combined. A part must be a complete checkpoint of its own
(a single process saving only some layers of a stacked tensor is refused by the writer), so a part
holding layers [a, b) saves the stacked tensors with b - a layers; the merge moves them back to a. The result is exactly what one save of the
whole dict would describe (the same chunks, in other files), which the merge checks: every tensor's
chunks must tile its global shape.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil

import torch

from ..models.tensor_map import LAYER_PREFIX
from .errors import CheckpointError

METADATA = ".metadata"  # torch.distributed.checkpoint's FileSystemWriter/Reader name for it


def _sharded_tensors(entry):
    from .sharded import _iter_sharded_tensors

    return list(_iter_sharded_tensors(entry))


def plan_parts(model_sd: dict, part_bytes: int) -> list[tuple[list[str], int | None]]:
    """Top-level keys of ``model_sd`` grouped into parts (keys, first layer or None): whole layers, in
    order, ~``part_bytes`` each.

    Entries without tensors (``_extra_state`` objects) go with the first part; each tensor outside the
    layers (embedding, final norm, output layer) is a unit of its own.
    """
    from .sharded import split_sharded_key

    units: dict[tuple, list[str]] = {}
    sizes: dict[tuple, int] = {}
    objects = []
    for key, entry in model_sd.items():
        tensors = _sharded_tensors(entry)
        if not tensors:
            objects.append(key)
            continue
        layer = split_sharded_key(tensors[0])[1]
        unit = (1, layer, "") if layer is not None else (0, 0, key)
        units.setdefault(unit, []).append(key)
        sizes[unit] = sizes.get(unit, 0) + sum(math.prod(t.local_shape) * t.data.element_size() for t in tensors)
    parts, keys, first, size = [], [], None, 0
    for unit in sorted(units, key=lambda u: u[:2]):  # stable: globals keep their order, then layers
        if keys and size + sizes[unit] > part_bytes:
            parts.append((keys, first))
            keys, first, size = [], None, 0
        keys = keys + units[unit]
        size += sizes[unit]
        if unit[0] == 1 and first is None:
            first = unit[1]
    if keys or not parts:
        parts.append((keys, first))
    parts[0] = (objects + parts[0][0], parts[0][1])
    return parts


def rebase_layers(part_sd: dict, first: int) -> None:
    """Give the part's stacked (per-layer) tensors a layer axis of its own layers only, starting at 0."""
    shards = [t for t in _sharded_tensors(part_sd) if t.prepend_axis_num == 1]
    if not shards:
        return
    count = 1 + max(t.global_offset[0] for t in shards) - first
    for t in shards:
        t.global_shape = (count, *t.global_shape[1:])
        t.global_offset = (t.global_offset[0] - first, *t.global_offset[1:])
        t.axis_fragmentations = (count, *t.axis_fragmentations[1:])


def merge_parts(part_dirs: list[str], first_layers: list[int | None], num_layers: int, iter_dir: str) -> None:
    """Move the parts' data files into ``iter_dir`` and write their combined metadata there; the stacked
    tensors of a part whose layers start at ``first_layers[i]`` move back to that layer.

    ``common.pt`` and ``metadata.json`` come from the first part (the only one saved with the common state).
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    os.makedirs(iter_dir, exist_ok=True)
    merged = None
    n_files = 0
    for part, first in zip(part_dirs, first_layers):
        meta = FileSystemReader(part).read_metadata()
        if first is not None:
            _shift_layers(meta, first, num_layers)
        renamed = {}
        for name in sorted(os.listdir(part)):
            if name.endswith(".distcp"):
                renamed[name] = f"__0_{n_files}.distcp"
                os.replace(os.path.join(part, name), os.path.join(iter_dir, renamed[name]))
                n_files += 1
        for info in meta.storage_data.values():
            info.relative_path = renamed[info.relative_path]
        if merged is None:
            merged = meta
            for name in ("common.pt", "metadata.json"):
                shutil.copyfile(os.path.join(part, name), os.path.join(iter_dir, name))
            continue
        for key, item in meta.state_dict_metadata.items():
            have = merged.state_dict_metadata.get(key)
            if have is None:
                merged.state_dict_metadata[key] = item
            elif isinstance(item, TensorStorageMetadata):
                if tuple(have.size) != tuple(item.size):
                    raise CheckpointError(f"{part}: {key} has global shape {tuple(item.size)} here, {tuple(have.size)} before")
                have.chunks.extend(item.chunks)
            else:
                raise CheckpointError(f"{part}: object {key} was written by two parts")
        merged.storage_data.update(meta.storage_data)
    _check_complete(merged, iter_dir)
    with open(os.path.join(iter_dir, METADATA + ".tmp"), "wb") as f:
        pickle.dump(merged, f)
    os.replace(os.path.join(iter_dir, METADATA + ".tmp"), os.path.join(iter_dir, METADATA))


def _shift_layers(meta, first: int, num_layers: int) -> None:
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    shifted = set()
    for key, item in meta.state_dict_metadata.items():
        if key.startswith(LAYER_PREFIX) and isinstance(item, TensorStorageMetadata):
            item.size = torch.Size((num_layers, *item.size[1:]))
            for c in item.chunks:
                c.offsets = torch.Size((c.offsets[0] + first, *c.offsets[1:]))
            shifted.add(key)
    meta.storage_data = {
        (MetadataIndex(i.fqn, torch.Size((i.offset[0] + first, *i.offset[1:])), i.index) if i.fqn in shifted else i): v
        for i, v in meta.storage_data.items()
    }


def _check_complete(meta, iter_dir: str) -> None:
    """Every tensor's saved chunks add up to its global shape (what a one-shot save validates)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    for key, item in meta.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            covered = sum(math.prod(c.sizes) for c in item.chunks)
            if covered != math.prod(item.size):
                raise CheckpointError(f"{iter_dir}: {key} is not completely written ({covered} of {math.prod(item.size)} elements)")
