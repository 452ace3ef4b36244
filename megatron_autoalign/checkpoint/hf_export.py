"""Write an HF model directory from a source of global megatron tensors."""

from __future__ import annotations

import json
import os

import torch

from ..models.tensor_map import hf_from_megatron, hf_tensor_count
from .layout import copy_hf_side_files
from .safetensors_io import ShardedSafetensorsWriter

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def write_hf_checkpoint(source, hf_config: dict, side_dir: str | None, out_dir: str, dtype: torch.dtype,
                        max_shard_bytes: int = 10**9, progress=None) -> list[str]:
    """config.json (shapes from ``hf_config``, dtype set), generation config and tokenizer files copied
    from ``side_dir`` (the original HF model), weights as sharded safetensors + index."""
    os.makedirs(out_dir, exist_ok=True)
    writer = ShardedSafetensorsWriter(out_dir, dtype, max_shard_bytes)
    items = hf_from_megatron(source.family, source.get, source.dims)
    total = hf_tensor_count(source.family, source.dims)
    for name, tensor in progress(items, total=total) if progress else items:
        writer.add(name, tensor)
    shards = writer.close()
    if side_dir:
        copy_hf_side_files(side_dir, out_dir, skip=("config.json",))
    config = dict(hf_config)
    if "dtype" in config or "torch_dtype" not in config:
        config["dtype"] = _DTYPE_NAMES[dtype]
    if "torch_dtype" in config:
        config["torch_dtype"] = _DTYPE_NAMES[dtype]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    if not os.path.isfile(os.path.join(out_dir, "generation_config.json")):
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
            json.dump(gen, f, indent=2)
    return shards
