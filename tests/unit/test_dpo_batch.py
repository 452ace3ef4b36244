"""DPO micro-batches: every trained target lands in its own sequence slot, on exactly one CP rank."""
import numpy as np
import pytest
import torch

from megatron_autoalign.dpo.batch import collate_pairs
from megatron_autoalign.dpo.synthetic import make_pairs


def rows_of(pairs, per_row):
    rows, first = [], 0
    for k in range(0, len(pairs), per_row):
        group = pairs[k:k + per_row]
        docs = [d for p in group for d in ((p[0], p[1]), (p[2], p[3]))]
        rows.append({"input_ids": np.concatenate([d[0] for d in docs]).astype(np.int64),
                     "labels": np.concatenate([d[1] for d in docs]).astype(np.int64),
                     "doc_lens": np.array([len(d[0]) for d in docs]), "pair_index": first,
                     "ref_logps": np.arange(2 * len(group), dtype=np.float32).reshape(-1, 2) + 2 * first})
        first += len(group)
    return rows


def expected_targets(pairs):
    """(sequence slot, target token) of every trained target: label j is predicted at position j-1."""
    out = []
    for k, p in enumerate(pairs):
        for side, (ids, lab) in enumerate(((p[0], p[1]), (p[2], p[3]))):
            out += [(2 * k + side, int(t)) for t in lab[1:] if t != -100]
    return sorted(out)


@pytest.mark.parametrize("packed,per_row,capacity", [(False, 1, 16), (True, 3, 112)])
@pytest.mark.parametrize("cp", [1, 2])
def test_targets_reach_their_sequence_once(packed, per_row, capacity, cp):
    pairs = make_pairs(6, 16, vocab=100, seed=3)
    rows = rows_of(pairs, per_row)
    got, shapes = [], set()
    for rank in range(cp):
        b = collate_pairs(rows, packed, capacity, cp, rank, pad_id=0)
        shapes.add(tuple(b["tokens"].shape))
        keep = b["seq_ids"] >= 0
        got += list(zip(b["seq_ids"][keep].tolist(), b["labels"][keep].tolist()))
        assert torch.equal(b["seq_trained"], torch.tensor([len([1 for t in lab[1:] if t != -100])
                                                           for p in pairs for lab in (p[1], p[3])]))
        assert b["num_pairs"] == 6 and b["pair_index"].tolist() == list(range(6))
        assert torch.equal(b["ref_logps"], torch.arange(12, dtype=torch.float32).view(6, 2))
    assert sorted(got) == expected_targets(pairs)
    assert len(shapes) == 1  # every CP rank holds the same number of tokens


def test_pairs_cannot_be_split():
    rows = rows_of(make_pairs(2, 16, vocab=100), 1)
    rows[0]["doc_lens"] = np.array([int(rows[0]["doc_lens"].sum())])
    with pytest.raises(ValueError, match="odd number of sequences"):
        collate_pairs(rows[:1], False, 32, 1, 0, 0)
