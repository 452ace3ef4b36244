"""Streaming safetensors I/O without mmap.

Reading goes through plain ``readinto`` into a fresh tensor, one tensor at a time: the bytes pass
through the page cache, not this process's RSS (an mmap'd multi-GB shard would count fully towards
peak RSS once touched). Writing streams each tensor's bytes straight from its memory (no serialised
copy of the shard), which is what keeps conversion memory near one copy of the weights.

Format: 8-byte little-endian header length N, N bytes of JSON header
``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``, then the data.
"""

from __future__ import annotations

import json
import os
import struct

import torch

from ..models.family import ConfigError
from ..models.hf_config import load_hf_config
from .errors import CheckpointError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsFile:
    """One ``.safetensors`` file: header parsed and validated up front, tensors read on demand."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: shard file is missing")
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: corrupt safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100 * 2**20:
                raise CheckpointError(f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        end_max = 0
        for name, e in header.items():
            try:
                dtype = _DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}") from None
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * dtype.itemsize:
                raise CheckpointError(
                    f"{path}: size mismatch for {name!r}: shape {list(shape)} {e['dtype']} needs "
                    f"{numel * dtype.itemsize} bytes, header gives {end - begin}"
                )
            self.entries[name] = (dtype, shape, begin, end)
            end_max = max(end_max, end)
        if self.data_start + end_max > size:
            raise CheckpointError(
                f"{path}: truncated shard (size mismatch): header needs {self.data_start + end_max} bytes, file has {size}"
            )

    def get(self, name: str) -> torch.Tensor:
        dtype, shape, begin, end = self.entries[name]
        out = torch.empty(end - begin, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(memoryview(out.numpy())) != end - begin:
                raise CheckpointError(f"{self.path}: truncated while reading {name!r}")
        return out.view(dtype).reshape(shape)


class HFReader:
    """An HF model directory: ``config.json`` plus one safetensors file or an indexed set of shards.

    Every shard named by the index must exist and list the tensors the index puts there.
    """

    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: HF model directory does not exist")
        self.path = path
        try:
            self.config = load_hf_config(path)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        index = os.path.join(path, INDEX_NAME)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: corrupt index ({e})") from None
        elif os.path.isfile(os.path.join(path, SINGLE_NAME)):
            weight_map = {k: SINGLE_NAME for k in SafetensorsFile(os.path.join(path, SINGLE_NAME)).entries}
        else:
            raise CheckpointError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors checkpoints are supported)")
        self.files = {name: SafetensorsFile(os.path.join(path, name)) for name in sorted(set(weight_map.values()))}
        self.weight_map = weight_map
        for tensor, shard in weight_map.items():
            if tensor not in self.files[shard].entries:
                raise CheckpointError(f"{self.files[shard].path}: index says it holds {tensor!r} but it does not")

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: tensor {name!r} is missing from the checkpoint")
        return self.files[self.weight_map[name]].get(name)



def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1GiB' or a byte count."""
    if isinstance(text, int):
        return text
    t = text.strip().upper()
    for suffix, mult in (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


class ShardedSafetensorsWriter:
    """Writes ``model-0000i-of-0000n.safetensors`` shards of at most ``max_shard_bytes`` plus the index.

    ``add`` only keeps references; a shard is written (and its tensors released) once full. Tensors are
    cast to ``dtype`` one at a time while writing.
    """

    def __init__(self, out_dir: str, dtype: torch.dtype, max_shard_bytes: int = 10**9):
        self.out_dir, self.dtype, self.max = out_dir, dtype, max_shard_bytes
        self.pending: list[tuple[str, torch.Tensor]] = []
        self.pending_bytes = 0
        self.written: list[tuple[str, list[str]]] = []  # temp file, tensor names
        self.total = 0
        os.makedirs(out_dir, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * self.dtype.itemsize
        if self.pending and self.pending_bytes + nbytes > self.max:
            self._flush()
        self.pending.append((name, tensor))
        self.pending_bytes += nbytes

    def _flush(self) -> None:
        header, offset = {}, 0
        for name, t in self.pending:
            n = t.numel() * self.dtype.itemsize
            header[name] = {"dtype": _NAMES[self.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
        path = os.path.join(self.out_dir, f"tmp-shard-{len(self.written):05d}.safetensors")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, t in self.pending:
                t = t.detach().to("cpu", self.dtype).contiguous()
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.written.append((path, [name for name, _ in self.pending]))
        self.total += offset
        self.pending, self.pending_bytes = [], 0

    def close(self) -> list[str]:
        if self.pending:
            self._flush()
        n = len(self.written)
        weight_map, names = {}, []
        for i, (tmp, tensors) in enumerate(self.written):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, os.path.join(self.out_dir, final))
            weight_map.update({t: final for t in tensors})
            names.append(final)
        with open(os.path.join(self.out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"total_size": self.total}, "weight_map": weight_map}, f, indent=2)
        return names
