"""What a resume checks before it trusts a checkpoint folder, and which old checkpoints a run may delete.

- The iteration to resume (the tracker's, or ``--ckpt-step N``) must be whole: a damaged one is reported in
  one line with the file, the iteration and the earlier complete iterations to resume from instead.
- The training data must be the data the checkpoint trained on: the checkpoint records the sha256 of the
  data's manifest, and a resume on other data (re-preprocessed, reshuffled, grown) is refused unless
  ``--allow-data-change`` says it is meant (the saved sample position then points into the new data).
- ``--keep-last-checkpoints K``: after a save is complete (tracker written), older ``iter_N`` folders
  beyond the newest K are deleted; never the one the tracker names, never one newer than it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from megatron_autoalign.checkpoint import CheckpointError, iteration_dir, read_tracker
from megatron_autoalign.checkpoint.completeness import check_complete, complete_iterations, iteration_numbers


def check_resumable(load_dir: str, iteration: int) -> str:
    """The folder of ``iteration`` under ``load_dir`` if it is whole; else one line that says what to do."""
    path = iteration_dir(load_dir, iteration)
    try:
        check_complete(path)
    except CheckpointError as e:
        earlier = [i for i in complete_iterations(load_dir) if i < iteration]
        if earlier:
            hint = (f"complete earlier iterations: {', '.join(map(str, earlier))}; resume from one with "
                    f"--ckpt-step {earlier[-1]}")
        else:
            hint = "no earlier complete iteration in this folder"
        raise CheckpointError(f"{e}: checkpoint iteration {iteration} is damaged; {hint}") from None
    return path


def resume_iteration(load_dir: str, ckpt_step: int | None) -> int | str:
    """The tracker's iteration ('release' for a converted checkpoint), or ``--ckpt-step``'s."""
    if ckpt_step is None:
        return read_tracker(load_dir)
    if not os.path.isdir(iteration_dir(load_dir, ckpt_step)):
        have = ", ".join(str(i) for i in iteration_numbers(load_dir)) or "none"
        raise CheckpointError(f"--ckpt-step {ckpt_step}: {iteration_dir(load_dir, ckpt_step)} does not exist "
                              f"(iterations in {load_dir}: {have})")
    return ckpt_step


def manifest_sha256(manifest: dict | None) -> str | None:
    """The training data's identity: the sha256 of its manifest (row counts, token counts, input hash)."""
    if manifest is None:
        return None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def check_same_data(train_state: dict, data_hash: str | None, allow_change: bool, data_path: str, ckpt: str) -> None:
    saved = train_state.get("data_manifest_sha256")
    if saved is None or data_hash is None or saved == data_hash or allow_change:
        return
    raise CheckpointError(
        f"{data_path}: the training data changed since {ckpt} was saved (manifest sha256 {saved[:12]} -> "
        f"{data_hash[:12]}): resuming would continue at sample {train_state.get('consumed_samples')} of other data; "
        f"train on the original data, or pass --allow-data-change if this is meant (e.g. a grown dataset)")


def prune_checkpoints(save_dir: str, keep: int) -> list[int]:
    """Delete ``iter_N`` older than the newest ``keep`` at or below the tracker's iteration; returns the
    deleted iterations. Call after the tracker names a complete checkpoint."""
    tracked = read_tracker(save_dir)
    if keep < 1 or tracked == "release":
        return []
    older = [i for i in iteration_numbers(save_dir) if i <= tracked]
    doomed = [i for i in older[:-keep] if i != tracked]
    for i in doomed:
        shutil.rmtree(iteration_dir(save_dir, i), ignore_errors=True)
    return doomed
