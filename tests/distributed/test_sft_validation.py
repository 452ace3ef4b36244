"""Validation loss: on a separate set it is the same per-token mean the training step computes (checked
with a frozen model: lr 0), and on a --split of the data it runs on the held-out rows. TensorBoard gets
the same numbers as the JSON log."""

import json
import subprocess
import sys

import pytest

from tests.distributed.sft_common import base_args, convert

ENV_KEYS = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def setup(tiny_4layer_dir, tmp_path_factory):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp = tmp_path_factory.mktemp("sft_valid")
    data = str(tmp / "packed")
    write_synthetic_sft(data, 16, 64, packed=True, seed=3)
    return tmp, convert(tiny_4layer_dir, str(tmp / "mg")), data


def _train(args):
    import os

    proc = subprocess.run([sys.executable, "-m", "megatron_autoalign.training.sft", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **ENV_KEYS}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.timeout(300)
def test_validation_on_separate_set_equals_frozen_training_loss(setup):
    tmp, ckpt, data = setup
    log = tmp / "frozen.jsonl"
    # One step over all 16 rows with lr 0, then validation over the same 16 rows: same model, same tokens.
    _train(base_args(data, ckpt, str(log), iters=1, extra=[
        "--lr", 0, "--min-lr", 0, "--lr-warmup-iters", 0, "--global-batch-size", 16, "--micro-batch-size", 4,
        "--valid-data-path", data, "--eval-iters", 1, "--no-shuffle", "--tensorboard-dir", tmp / "tb"]))
    records = _records(log)
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid/lm loss" in r]
    assert len(train) == 1 and len(valid) == 1
    assert train[0]["loss"] > 5.0
    assert abs(valid[0]["valid/lm loss"] - train[0]["loss"]) < 1e-6, (train, valid)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp / "tb"))
    events.Reload()
    scalars = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["train/loss"] == pytest.approx([train[0]["loss"]], abs=1e-6)
    assert scalars["valid/lm loss"] == pytest.approx([valid[0]["valid/lm loss"]], abs=1e-6)


@pytest.mark.timeout(300)
def test_split_holds_out_rows_for_validation(setup):
    tmp, ckpt, data = setup
    log = tmp / "split.jsonl"
    args = base_args(data, ckpt, str(log), extra=[
        "--split", "75,25,0", "--global-batch-size", 4, "--eval-interval", 1, "--eval-iters", 1])
    i = args.index("--train-iters")
    del args[i:i + 2]  # iterations from epochs x training rows / global batch
    out = _train(args)
    records = _records(log)
    train = [r for r in records if "loss" in r]
    valid = [r["valid/lm loss"] for r in records if "valid/lm loss" in r]
    # 12 of 16 rows train: one epoch is 12 / 4 = 3 iterations, each followed by a validation pass.
    assert len(train) == 3, out[-2000:]
    assert len(valid) == 3 and all(v > 0 for v in valid)
    assert valid[-1] < valid[0]  # the model learns; held-out loss moves with it
