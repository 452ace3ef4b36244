"""Reader for the DPO idx/bin + manifest written by ``dpo.preprocess`` (the training side of the contract).

Row i -> {"input_ids", "labels", "doc_lens", "pair_index", ["ref_logps"]}: the SFT row layout (labels
aligned, not shifted, -100 = not trained) whose documents come in pairs [chosen, rejected, chosen, ...];
``pair_index`` is the global index of the row's first pair; ``ref_logps`` [pairs in row, 2] (chosen,
rejected) when a reference scoring pass has been recorded in the manifest.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from ..data import manifest as _manifest
from ..data.indexed import open_aligned, read_row

DPO_FORMAT = "megatron_autoalign.dpo.v1"
FIELDS = ("input_ids", "labels")


def load_manifest(prefix: str) -> dict:
    return _manifest.load_manifest(prefix, DPO_FORMAT)


def reference_path(prefix: str) -> str:
    return f"{prefix}_ref_logps.npy"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PreferenceDataset(torch.utils.data.Dataset):
    def __init__(self, prefix: str, use_reference: bool = False):
        """``use_reference``: attach the recorded reference log-probs (error if there are none)."""
        self.prefix = prefix
        self.manifest = m = load_manifest(prefix)
        self._ds = open_aligned(prefix, FIELDS)
        docs = self._ds["input_ids"].document_indices
        per_row = np.diff(docs)
        if len(per_row) != m["num_rows"] or per_row.sum() != 2 * m["num_pairs"] or (per_row % 2).any():
            raise ValueError(f"{prefix}: idx/bin ({len(per_row)} rows, {per_row.sum()} sequences) disagree with "
                             f"the manifest ({m['num_rows']} rows, {m['num_pairs']} pairs)")
        self.pairs_per_row = per_row // 2
        self.first_pair = np.concatenate([[0], np.cumsum(self.pairs_per_row)[:-1]]).astype(np.int64)
        self.ref = self._load_reference() if use_reference else None

    def _load_reference(self) -> np.ndarray:
        entry = self.manifest.get("reference")
        path = reference_path(self.prefix)
        if not entry or not os.path.exists(path):
            raise ValueError(f"{self.prefix}: no reference log-probs recorded; run "
                             f"python -m megatron_autoalign.dpo.score_reference first (or use an online reference)")
        ref = np.load(path, mmap_mode="r")
        if ref.shape != (self.manifest["num_pairs"], 2):
            raise ValueError(f"{path}: shape {ref.shape}, expected ({self.manifest['num_pairs']}, 2)")
        if entry.get("sha256") and entry["sha256"] != file_sha256(path):
            raise ValueError(f"{path}: content does not match the manifest's sha256 (rescore the reference)")
        return ref

    def __len__(self) -> int:
        return len(self.pairs_per_row)

    def __getitem__(self, i) -> dict:
        i = int(i)
        rows, lens = read_row(self._ds, i)
        item = {"input_ids": rows["input_ids"], "labels": rows["labels"], "doc_lens": lens,
                "pair_index": int(self.first_pair[i])}
        if self.ref is not None:
            lo = self.first_pair[i]
            item["ref_logps"] = np.asarray(self.ref[lo:lo + self.pairs_per_row[i]], dtype=np.float32)
        return item
