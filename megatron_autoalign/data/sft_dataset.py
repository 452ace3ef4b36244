"""Reader for the SFT idx/bin + manifest written by `preprocess_sft` (the training side of the contract).

Row i -> {"input_ids", "labels", "doc_lens"}: labels are aligned with input_ids (not shifted; -100 =
not trained); doc_lens are the conversation lengths inside the (possibly packed) row, sum == row length.
"""
from __future__ import annotations

import torch

from . import manifest as _manifest
from .indexed import open_aligned, read_row

FIELDS = ("input_ids", "labels")


def load_manifest(prefix: str) -> dict:
    return _manifest.load_manifest(prefix, _manifest.SFT_FORMAT)


class SFTDataset(torch.utils.data.Dataset):
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.manifest = load_manifest(prefix)
        self._ds = open_aligned(prefix, FIELDS)
        rows = len(self._ds["input_ids"].document_indices) - 1
        m = self.manifest
        if rows != m["num_rows"] or int(self._ds["input_ids"].sequence_lengths.sum()) != m["num_tokens"]:
            raise ValueError(f"{prefix}: idx/bin ({rows} rows) disagree with the manifest ({m['num_rows']} rows)")

    def __len__(self) -> int:
        return len(self._ds["input_ids"].document_indices) - 1

    def __getitem__(self, i) -> dict:
        rows, lens = read_row(self._ds, int(i))
        return {"input_ids": rows["input_ids"], "labels": rows["labels"], "doc_lens": lens}
