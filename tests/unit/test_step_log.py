"""The training log's lines (Megatron-LM's fields, tokens/s and time per iteration without validation/save time,
ETA, memory), the end-of-run summary, node 0's compact line, and the trackers (TensorBoard, W&B offline) getting
the same ``train/`` and ``valid/`` scalars. A fake clock drives the timings, so every number is exact."""

import glob
import json
import re
import time
from types import SimpleNamespace

import pytest
import torch

from megatron_autoalign.training import step_log


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    c = FakeClock()
    monkeypatch.setattr(step_log, "clock", c)
    monkeypatch.setattr(step_log, "process_start", lambda: 990.0)
    return c


def make_args(tmp_path, **kw):
    """The run config (training/config.py) of these flags, as the training entry point parses them."""
    from megatron_autoalign.training.config import parse_run_config

    base = dict(train_iters=3, global_batch_size=4, log_json=str(tmp_path / "log.jsonl"), tensorboard_dir=None,
                wandb_project=None, wandb_exp_name=None, wandb_save_dir=None, save=str(tmp_path / "ckpt"),
                peak_tflops=None, seq_length=64)
    argv = ["--data-path", "unused", "--hf-config", "unused"]
    for name, value in {**base, **kw}.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return parse_run_config(argv, world_size=1)


def metric(total, count):
    return torch.tensor([float(total), float(count)])


def two_steps(log, clock, primary, extra=None):
    """Step 1: 2 s, then a 10 s checkpoint; step 2: 2 s with a NaN grad norm (skipped)."""
    clock.now += 2
    log.step_done(1.5, True)
    log.queue(1, {primary: metric(6, 3), **(extra or {})}, 1.5, 1e-4, 100, 4, 0, torch.device("cpu"))
    with log.paused("checkpoint"):
        clock.now += 10
    clock.now += 2
    log.step_done(float("nan"), False)
    log.flush()
    log.queue(2, {primary: metric(3, 3), **(extra or {})}, float("nan"), 5e-5, 300, 8, 1, torch.device("cpu"))
    log.flush()


def test_iteration_lines_have_megatron_fields_and_exclude_paused_time(tmp_path, clock, capsys):
    task = SimpleNamespace(primary_metric="lm loss")
    log = step_log.StepLogger(make_args(tmp_path), {}, task)
    two_steps(log, clock, "lm loss")
    log.summary(2, 0, str(tmp_path / "ckpt" / "iter_0000002"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3, lines
    first, second, summary = lines
    stamp = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
    assert re.match(stamp + r"iteration 1/3 \| consumed samples: 4 \| elapsed time per iteration \(ms\): 2000\.0 \| "
                    r"learning rate: 1\.000000E-04 \| global batch size: 4 \| lm loss: 2\.000000E\+00 \| "
                    r"grad norm: 1\.500 \| number of skipped iterations: 0 \| number of nan iterations: 0 \| "
                    r"tokens/s: 50 \| mem \(RSS\): \d+\.\d\d GB \| ETA 0:00:04$", first), first
    # The 10 s checkpoint is not in step 2's time: 300 tokens / 2 s, ETA 1 step x 2 s.
    assert re.match(stamp + r"iteration 2/3 \| consumed samples: 8 \| elapsed time per iteration \(ms\): 2000\.0 \| "
                    r"learning rate: 5\.000000E-05 \| global batch size: 4 \| lm loss: 1\.000000E\+00 \| "
                    r"grad norm: nan \| number of skipped iterations: 1 \| number of nan iterations: 1 \| "
                    r"tokens/s: 150 \| mem \(RSS\): .* \| ETA 0:00:02$", second), second
    assert re.match(stamp + r"training done: iteration 2/3 \(2 in this run\) \| tokens: 400 \| wall time 0:00:24 "
                    r"\(training 0:00:04, checkpoint 0:00:10\) \| checkpoint: .*/ckpt/iter_0000002$", summary), summary
    records = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert [(r["iteration"], r["loss"], r["tokens_per_s"], r["skipped_steps"], r["nan_iterations"]) for r in records] \
        == [(1, 2.0, 50.0, 0, 0), (2, 1.0, 150.0, 1, 1)]


def test_node0_prints_a_compact_line_when_the_loss_is_on_another_node(tmp_path, clock, capsys, monkeypatch):
    monkeypatch.setattr(step_log, "is_last_rank", lambda: False)  # rank 0 of a 2-node job
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    log = step_log.StepLogger(make_args(tmp_path), {}, SimpleNamespace(primary_metric="lm loss"))
    assert log.compact and log.trackers is None
    two_steps(log, clock, "lm loss")
    log.summary(2, 0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.search(r"\] iteration 2/3 \| elapsed time per iteration \(ms\): 2000\.0 \| tokens/s: 150 \| "
                     r"grad norm: nan \| ETA 0:00:02 \| \(loss: see the last node's log\)$", lines[1]), lines
    assert "training done: iteration 2/3" in lines[2] and "tokens: 400" in lines[2]
    assert not (tmp_path / "log.jsonl").exists()  # records come from the last rank only

    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")  # one node: rank 0's log already has the full lines
    assert not step_log.StepLogger(make_args(tmp_path), {}, SimpleNamespace(primary_metric="lm loss")).compact


def read_wandb_history(run_file: str) -> list[dict]:
    """History rows of a W&B run file: W&B's record log (LevelDB log framing in 32 KiB blocks, after a 7-byte
    ':W&B' header) of protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    rows, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            pending = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
    return rows


def test_wandb_offline_and_tensorboard_get_the_same_train_and_valid_scalars(tmp_path, clock, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is an optional extra (pip install -e '.[wandb]'); in the test extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = make_args(tmp_path, wandb_project="ma-test", wandb_exp_name="dpo-run", tensorboard_dir=str(tmp_path / "tb"),
                     wandb_save_dir=str(tmp_path / "wb"))
    log = step_log.StepLogger(args, {}, SimpleNamespace(primary_metric="loss"))  # DPO's metric names
    two_steps(log, clock, "loss", {"rewards/accuracy": metric(3, 4)})
    log.record({"iteration": 2, "valid/loss": 0.25, "valid/rewards/accuracy": 1.0})
    log.close()

    (run_file,) = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    for _ in range(300):  # W&B's service process finishes writing the file just after finish() returns
        rows = read_wandb_history(run_file)
        if sum("valid/loss" in r for r in rows):
            break
        time.sleep(0.1)
    wb = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_"):
                wb.setdefault(k, {})[row["_step"]] = v
    assert wb["train/loss"] == {1: 2.0, 2: 1.0}
    assert wb["train/rewards/accuracy"] == {1: 0.75, 2: 0.75}
    assert wb["train/tokens_per_s"] == {1: 50.0, 2: 150.0}
    assert wb["valid/loss"] == {2: 0.25} and wb["valid/rewards/accuracy"] == {2: 1.0}
    assert "train/grad_norm" in wb and 2 not in wb["train/grad_norm"]  # NaN is dropped, not logged

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tb = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert set(tb) == set(wb)  # the same scalar names in both trackers
    for tag in tb:
        assert tb[tag] == pytest.approx(wb[tag], rel=1e-6), tag
