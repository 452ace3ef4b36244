"""Resume checks (training/resume_checks.py): a damaged checkpoint is one line naming the file, the
iteration and the earlier complete iterations; --keep-last-checkpoints deletes only older folders."""

import json
import os

import pytest
import torch

from megatron_autoalign.checkpoint import CheckpointError, write_tracker
from megatron_autoalign.training.resume_checks import (
    check_resumable, check_same_data, manifest_sha256, prune_checkpoints, resume_iteration,
)


def _fake_iteration(root, it: int) -> str:
    """An iter_N folder with the files of a torch_dist checkpoint (written by torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(root, f"iter_{it:07d}")
    dcp.save({"w": torch.arange(4096, dtype=torch.float32)}, checkpoint_id=path, no_dist=True)
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist"}, f)
    torch.save({"train_state": {"iteration": it}}, os.path.join(path, "common.pt"))
    return path


def _truncate(path: str, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


@pytest.mark.parametrize("victim", ["__0_0.distcp", "common.pt", ".metadata"])
def test_damaged_latest_names_file_iteration_and_earlier(tmp_path, victim):
    root = str(tmp_path)
    for it in (2, 4, 6):
        _fake_iteration(root, it)
    write_tracker(root, 6)
    assert check_resumable(root, 6).endswith("iter_0000006")
    _truncate(os.path.join(root, "iter_0000004", "common.pt"), 10)  # an earlier damaged one is not offered
    target = os.path.join(root, "iter_0000006", victim)
    _truncate(target, os.path.getsize(target) // 2)
    with pytest.raises(CheckpointError) as e:
        check_resumable(root, 6)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{target}: ")
    assert "truncated" in message if victim.endswith(".distcp") else "unreadable" in message
    assert message.endswith("checkpoint iteration 6 is damaged; complete earlier iterations: 2; resume from one with --ckpt-step 2")
    assert resume_iteration(root, 2) == 2 and resume_iteration(root, None) == 6
    with pytest.raises(CheckpointError, match=r"--ckpt-step 5: .*iter_0000005 does not exist \(iterations in .*: 2, 4, 6\)"):
        resume_iteration(root, 5)


def test_keep_last_deletes_older_only(tmp_path):
    root = str(tmp_path)
    for it in (1, 2, 3, 4, 5):
        os.makedirs(os.path.join(root, f"iter_{it:07d}"))
    write_tracker(root, 4)  # iter_5: a newer partial save (a crashed run's), not ours to judge
    assert prune_checkpoints(root, 2) == [1, 2]
    assert sorted(os.listdir(root)) == ["iter_0000003", "iter_0000004", "iter_0000005", "latest_checkpointed_iteration.txt"]
    assert prune_checkpoints(root, 1) == [3]
    write_tracker(root, "release")
    assert prune_checkpoints(root, 1) == []


def test_changed_data_is_refused_unless_allowed():
    old, new = manifest_sha256({"num_rows": 10, "input_sha256": "a"}), manifest_sha256({"num_rows": 10, "input_sha256": "b"})
    assert manifest_sha256({"input_sha256": "a", "num_rows": 10}) == old  # key order does not matter
    state = {"data_manifest_sha256": old, "consumed_samples": 40}
    check_same_data(state, old, False, "data/sft", "ckpt/iter_0000005")
    check_same_data(state, new, True, "data/sft", "ckpt/iter_0000005")
    check_same_data({"consumed_samples": 40}, new, False, "data/sft", "ckpt/iter_0000005")  # older checkpoints
    with pytest.raises(CheckpointError) as e:
        check_same_data(state, new, False, "data/sft", "ckpt/iter_0000005")
    assert str(e.value) == (f"data/sft: the training data changed since ckpt/iter_0000005 was saved (manifest sha256 "
                            f"{old[:12]} -> {new[:12]}): resuming would continue at sample 40 of other data; train on "
                            "the original data, or pass --allow-data-change if this is meant (e.g. a grown dataset)")
