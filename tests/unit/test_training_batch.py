"""SFT batch building: in-document label shift, thd flattening with padding documents, CP split."""

import numpy as np
import torch

from megatron_autoalign.training.sft_batch import (
    IGNORE_INDEX, collate_sbhd, collate_thd, row_capacity, shift_within_docs,
)


def test_shift_never_crosses_documents():
    labels = np.array([10, 11, 12, 20, 21, -100, 23])
    out = shift_within_docs(labels, np.array([3, 4]))
    assert out.tolist() == [11, 12, IGNORE_INDEX, 21, -100, 23, IGNORE_INDEX]


def _row(ids, labels, lens):
    return {"input_ids": np.array(ids), "labels": np.array(labels), "doc_lens": np.array(lens)}


def test_thd_flattens_rows_with_padding_documents():
    rows = [_row([1, 2, 3, 4, 5], [-100, 2, 3, -100, 5], [3, 2]), _row([6, 7, 8], [6, 7, 8], [3])]
    b = collate_thd(rows, capacity=8, cp_size=1, cp_rank=0, pad_id=0)
    assert b["tokens"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0, 6, 7, 8, 0, 0, 0, 0, 0]]
    assert b["labels"].tolist() == [[2, 3, IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX,
                                      7, 8, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    # docs: [3, 2, pad 3] [3, pad 5]
    assert b["cu_seqlens_padded"].tolist() == [0, 3, 5, 8, 11, 16]
    assert b["cu_seqlens_padded"].dtype == torch.int32
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert b["max_seqlen"] == 5 and b["num_tokens"] == 8


def test_thd_cp_pads_each_document_and_splits_load_balanced():
    rows = [_row([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [3, 2])]
    cap = row_capacity(5, cp=2, tp_sp=1, max_docs_per_row=2)
    assert cap % 4 == 0 and cap >= 4 + 4  # each doc padded to a multiple of 2*CP
    full = collate_thd(rows, cap, 1, 0, 0)  # reference without CP split but same capacity
    parts = [collate_thd(rows, cap, 2, r, 0) for r in range(2)]
    cu = parts[0]["cu_seqlens_padded"].tolist()
    assert all((b - a) % 4 == 0 for a, b in zip(cu[:-1], cu[1:]))
    assert cu[:3] == [0, 4, 8]
    # rank 0 holds chunks 0 and 3 of every document, rank 1 chunks 1 and 2 (chunk = len/4)
    assert parts[0]["tokens"].tolist()[0][:2] == [1, 0] and parts[1]["tokens"].tolist()[0][:2] == [2, 3]
    assert parts[0]["position_ids"].tolist()[0][:2] == [0, 3]
    # every real token and target appears exactly once across CP ranks
    toks = sorted(t for p in parts for t in p["tokens"].view(-1).tolist() if t)
    assert toks == [1, 2, 3, 4, 5]
    assert sum(int((p["labels"] != IGNORE_INDEX).sum()) for p in parts) == int((full["labels"] != IGNORE_INDEX).sum()) == 3


def test_sbhd_pads_at_the_end_and_splits_for_cp():
    rows = [_row([1, 2, 3], [-100, 2, 3], [3]), _row([4, 5, 6, 7, 8], [4, 5, 6, 7, 8], [5])]
    b = collate_sbhd(rows, 8, 1, 0, 0)
    assert b["tokens"].shape == (2, 8)
    assert b["labels"].tolist()[0] == [2, 3, IGNORE_INDEX] + [IGNORE_INDEX] * 5
    c = collate_sbhd(rows, 8, 2, 1, 0)  # CP rank 1 of 2: chunks 1 and 2 (positions 2,3 and 4,5)
    assert c["position_ids"].tolist()[0] == [2, 3, 4, 5]
    assert c["tokens"].tolist()[1] == [6, 7, 8, 0]


def test_overfull_row_is_a_one_line_error():
    import pytest

    with pytest.raises(ValueError, match="does not fit"):
        collate_thd([_row([1] * 9, [1] * 9, [9])], 8, 1, 0, 0)
