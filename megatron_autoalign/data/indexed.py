"""Aligned Megatron IndexedDatasets: several fields (e.g. input_ids + labels) with identical lengths,
written atomically and read back with an agreement check. Shared by the SFT and DPO data.

Layout for prefix P and field F: `P_F.bin` / `P_F.idx` (megatron.core IndexedDataset, one Megatron
"document" per training row, one "sequence" per conversation inside the row), then `P_manifest.json`.

Writing does not import megatron.core: its IndexedDatasetBuilder would pull in all of megatron.core and
torch, about 4 s of a preprocessing run's start-up (more than everything else together for a small file).
`IndexWriter` writes the same bytes (version-1 MMIDIDX index; a unit test compares it byte for byte with
megatron.core's builder), and reading goes through megatron.core's IndexedDataset.
"""
from __future__ import annotations

import os
import struct
import warnings

import numpy as np


def _megatron_indexed():
    # importing megatron.core warns about missing TE/apex; irrelevant for data files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset

from .manifest import manifest_path, write_json_atomic

_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
                np.uint16: 8}  # megatron.core.datasets.indexed_dataset.DType


class IndexWriter:
    """One field's `.bin` (tokens, appended as they come) and `.idx` (written by `finalize`), in the format of
    megatron.core's IndexedDatasetBuilder: header, version 1, dtype code, sequence and document counts,
    int32 sequence lengths, int64 byte pointers, int64 document boundaries (no sequence modes)."""

    def __init__(self, bin_path: str, dtype=np.int32):
        self.dtype = np.dtype(dtype)
        self.data_file = open(bin_path, "wb")
        self.sequence_lengths: list[int] = []
        self.document_indices = [0]

    def add_document(self, tokens: np.ndarray, lengths: list[int]) -> None:
        self.data_file.write(np.asarray(tokens, dtype=self.dtype).tobytes(order="C"))
        self.sequence_lengths.extend(lengths)
        self.document_indices.append(len(self.sequence_lengths))

    def finalize(self, idx_path: str) -> None:
        self.data_file.close()
        lengths = np.asarray(self.sequence_lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        with open(idx_path, "wb") as f:
            f.write(_INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", _DTYPE_CODES[self.dtype.type]))
            f.write(struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(self.document_indices)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(np.asarray(self.document_indices, dtype=np.int64).tobytes(order="C"))


def field_prefix(prefix: str, field: str) -> str:
    return f"{prefix}_{field}"


class AlignedWriter:
    """Writes to temporary prefixes; `commit(manifest)` renames into place and writes the manifest last,
    so a crash never leaves outputs that look complete. Use as a context manager (aborts on error)."""

    def __init__(self, prefix: str, fields: tuple[str, ...], dtype=np.int32):
        self.prefix, self.fields, self.dtype = prefix, fields, dtype
        d = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(d, exist_ok=True)
        self.tmp = {f: f"{field_prefix(prefix, f)}.tmp{os.getpid()}" for f in fields}
        self.builders = {f: IndexWriter(self.tmp[f] + ".bin", dtype=dtype) for f in fields}
        self.num_rows = 0
        self.num_tokens = 0

    def add_row(self, arrays: dict, lengths: list[int]) -> None:
        n = int(sum(lengths))
        for f in self.fields:
            if len(arrays[f]) != n:
                raise ValueError(f"field {f}: {len(arrays[f])} tokens, lengths sum to {n}")
            self.builders[f].add_document(np.asarray(arrays[f], dtype=self.dtype), list(lengths))
        self.num_rows += 1
        self.num_tokens += n

    def commit(self, manifest: dict) -> None:
        for f in self.fields:
            self.builders[f].finalize(self.tmp[f] + ".idx")
        mpath = manifest_path(self.prefix)
        if os.path.exists(mpath):  # an older complete output is being replaced: unmark it first
            os.remove(mpath)
        for f in self.fields:
            for ext in (".bin", ".idx"):
                os.replace(self.tmp[f] + ext, field_prefix(self.prefix, f) + ext)
        write_json_atomic(mpath, manifest)

    def abort(self) -> None:
        for f in self.fields:
            try:
                self.builders[f].data_file.close()
            except Exception:
                pass
            for ext in (".bin", ".idx"):
                if os.path.exists(self.tmp[f] + ext):
                    os.remove(self.tmp[f] + ext)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()


def open_aligned(prefix: str, fields: tuple[str, ...]) -> dict:
    """Open every field's IndexedDataset (mmap) and check they have the same row/sequence structure."""
    IndexedDataset = _megatron_indexed().IndexedDataset
    out = {}
    for f in fields:
        p = field_prefix(prefix, f)
        if not (os.path.exists(p + ".bin") and os.path.exists(p + ".idx")):
            raise FileNotFoundError(f"{p}.bin/.idx: missing")
        out[f] = IndexedDataset(p, mmap=True)
    ref = out[fields[0]]
    for f in fields[1:]:
        ds = out[f]
        if not (np.array_equal(ds.sequence_lengths, ref.sequence_lengths)
                and np.array_equal(ds.document_indices, ref.document_indices)):
            raise ValueError(f"{prefix}: {f} and {fields[0]} are not aligned (different lengths or rows)")
    return out


def read_row(datasets: dict, i: int) -> tuple[dict, np.ndarray]:
    """Row i of every field (concatenated sequences, int64) and the per-sequence lengths."""
    ref = next(iter(datasets.values()))
    docs = ref.document_indices
    if not 0 <= i < len(docs) - 1:
        raise IndexError(f"row {i} out of range [0, {len(docs) - 1})")
    lo, hi = int(docs[i]), int(docs[i + 1])
    lens = ref.sequence_lengths[lo:hi].astype(np.int64)
    rows = {}
    for f, ds in datasets.items():
        ptr = ds.index.sequence_pointers[lo]
        rows[f] = ds.bin_reader.read(dtype=ds.index.dtype, count=int(lens.sum()), offset=ptr).astype(np.int64)
    return rows, lens
