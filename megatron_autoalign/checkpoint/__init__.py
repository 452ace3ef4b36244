"""Checkpoint I/O: streaming safetensors, Megatron torch_dist and legacy layouts, HF <-> Megatron conversion.

For the trainer:
- ``load_megatron_checkpoint_weights(model_chunks, ckpt_dir)``: weights of a converted or trained
  checkpoint (either layout, ``release`` or ``iter_N``, any TP/PP) into live model chunks.
- ``read_tracker(ckpt_dir)``: ``'release'`` or the iteration number.
"""

from __future__ import annotations

import re

from .errors import CheckpointError
from .layout import detect_format, iteration_dir, read_tracker, resolve_checkpoint, write_tracker


def load_megatron_checkpoint_weights(model_chunks, ckpt_dir: str) -> str:
    """Fill live GPTModel chunks (this rank's TP/PP/VPP stage) from a Megatron checkpoint; returns its format.

    ``ckpt_dir`` is a checkpoint root (with the tracker) or an iteration folder. torch_dist goes through
    ``dist_checkpointing.load`` with the chunks' own sharded state dicts; legacy through our reader, which
    merges the saved TP/PP shards and hands each rank its slice. A checkpoint that does not fit the model
    (shapes) is a one-line CheckpointError naming the first mismatching tensor.
    """
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    from .legacy import LegacySource
    from .sharded import fill_sharded_state_dict, layout_of_model
    from .torch_dist import load_torch_dist_into_chunks

    chunks = model_chunks if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    iter_dir, fmt = resolve_checkpoint(ckpt_dir)
    try:
        if fmt == "torch_dist":
            load_torch_dist_into_chunks(list(chunks), iter_dir)
        else:
            source = LegacySource(iter_dir, *layout_of_model(chunks[0]))
            for chunk in chunks:
                fill_sharded_state_dict(chunk.sharded_state_dict(), source)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # long multi-line texts from dist_checkpointing / load_state_dict
        text = " ".join(str(e).split())
        m = re.search(r"Size\((\[[^\]]*\])\)\) and expected \(\(([^)]*)\)\) tensor for key (\S+)", text)
        detail = f"{m.group(3)}: checkpoint {m.group(1)}, model [{m.group(2)}]" if m else text[:300]
        raise CheckpointError(f"{ckpt_dir}: checkpoint does not match the model built from the HF config ({detail})") from None
    return fmt


__all__ = [
    "CheckpointError",
    "detect_format",
    "iteration_dir",
    "load_megatron_checkpoint_weights",
    "read_tracker",
    "resolve_checkpoint",
    "write_tracker",
]
