"""Megatron checkpoint directory layout: tracker file, iteration folders, format detection."""

from __future__ import annotations

import glob
import os
import shutil

import torch

from .errors import CheckpointError

TRACKER = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0
# Files copied next to a converted Megatron checkpoint and into a converted HF directory.
HF_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "tokenizer.model",
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_tracker(ckpt_dir: str) -> str | int:
    """'release' or the iteration number written in ``<ckpt_dir>/latest_checkpointed_iteration.txt``."""
    path = os.path.join(ckpt_dir, TRACKER)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: tracker file is missing (not a Megatron checkpoint directory?)")
    text = open(path).read().strip()
    if text == "release":
        return "release"
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{path}: tracker holds {text!r}, expected 'release' or an iteration number") from None


def write_tracker(ckpt_dir: str, iteration: str | int) -> None:
    """Written last, atomically: a reader never sees a tracker pointing at a half-written checkpoint."""
    tmp = os.path.join(ckpt_dir, TRACKER + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
    os.replace(tmp, os.path.join(ckpt_dir, TRACKER))


def iteration_dir(ckpt_dir: str, iteration: str | int) -> str:
    return os.path.join(ckpt_dir, "release" if iteration == "release" else f"iter_{int(iteration):07d}")


def detect_format(iter_dir: str) -> str:
    """'torch_dist' (dist_checkpointing) or 'torch' (legacy mp_rank_* folders)."""
    if os.path.isfile(os.path.join(iter_dir, "metadata.json")):
        return "torch_dist"
    if glob.glob(os.path.join(iter_dir, "mp_rank_*", "model_optim_rng.pt")):
        return "torch"
    raise CheckpointError(f"{iter_dir}: neither a torch_dist (metadata.json) nor a legacy (mp_rank_*/model_optim_rng.pt) checkpoint")


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """(iteration folder, format) for a checkpoint root (tracker) or an iteration folder itself."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if os.path.isfile(os.path.join(path, TRACKER)):
        sub = iteration_dir(path, read_tracker(path))
        if not os.path.isdir(sub):
            raise CheckpointError(f"{sub}: the tracker points here but the folder is missing")
        return sub, detect_format(sub)
    return path, detect_format(path)


def hf_side_dir(ckpt_path: str) -> str | None:
    """Where the HF config/tokenizer copied at conversion time live (checkpoint root), if anywhere."""
    for d in (ckpt_path, os.path.dirname(os.path.abspath(ckpt_path))):
        if os.path.isfile(os.path.join(d, "config.json")):
            return d
    return None


def copy_hf_side_files(src_dir: str, dst_dir: str, skip: tuple[str, ...] = ()) -> list[str]:
    copied = []
    for name in HF_SIDE_FILES:
        if name not in skip and os.path.isfile(os.path.join(src_dir, name)):
            shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))
            copied.append(name)
    return copied
