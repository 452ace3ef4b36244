"""Is a torch_dist checkpoint folder whole? A cheap check before loading, so that a truncated or unreadable
file is reported in one line naming the file, not as a long traceback from deep inside the loader.

Checked: ``metadata.json`` parses; ``.metadata`` (torch.distributed.checkpoint's index) unpickles; every
byte range that index lists lies inside its ``.distcp`` file; ``common.pt`` loads. Values that were
corrupted in place (same size) are not detected.
"""

from __future__ import annotations

import glob
import json
import os
import re

from .errors import CheckpointError


def check_complete(iter_dir: str) -> None:
    """Raise CheckpointError ``<file>: <reason>`` for the first missing, truncated or unreadable file."""
    meta_json = os.path.join(iter_dir, "metadata.json")
    _readable(meta_json, lambda p: json.load(open(p)))
    index = os.path.join(iter_dir, ".metadata")
    metadata = _readable(index, lambda p: _read_index(iter_dir))
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        path = os.path.join(iter_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (listed in {index})")
        size = os.path.getsize(path)
        if size < end:
            raise CheckpointError(f"{path}: truncated ({size} bytes, the index needs {end})")
    common = os.path.join(iter_dir, "common.pt")
    if os.path.exists(common):
        import torch

        _readable(common, lambda p: torch.load(p, map_location="cpu", weights_only=False))


def _read_index(iter_dir: str):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(iter_dir).read_metadata()


def _readable(path: str, load):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing")
    try:
        return load(path)
    except Exception as e:  # any way a truncated or garbled file fails to parse
        reason = str(e).splitlines()[0][:120] if str(e) else ""
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}{': ' + reason if reason else ''})") from None


def iteration_numbers(ckpt_dir: str) -> list[int]:
    """N of every ``iter_N`` folder under ``ckpt_dir``, ascending."""
    found = []
    for path in glob.glob(os.path.join(ckpt_dir, "iter_*")):
        m = re.fullmatch(r"iter_(\d+)", os.path.basename(path))
        if m and os.path.isdir(path):
            found.append(int(m.group(1)))
    return sorted(found)


def complete_iterations(ckpt_dir: str) -> list[int]:
    """The iterations under ``ckpt_dir`` whose ``iter_N`` folder passes ``check_complete``, ascending."""
    done = []
    for i in iteration_numbers(ckpt_dir):
        try:
            check_complete(os.path.join(ckpt_dir, f"iter_{i:07d}"))
        except CheckpointError:
            continue
        done.append(i)
    return done
