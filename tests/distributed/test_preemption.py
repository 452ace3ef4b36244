"""Stopping on a signal (training/preemption.py): seeded fault injection.

One training run of N iterations is interrupted TRIALS times: each trial restarts the entry point on the same
--save/--load folder and sends a stop signal (SIGTERM, SIGINT, SIGUSR1 or SIGHUP, seeded) to the process at a
seeded point: during set-up, inside a forward pass, inside the optimizer step, inside a checkpoint save, or
while a log line is written. Every interrupted run must exit with EXIT_STOPPED after saving a complete
checkpoint at the iteration it stopped at, and the losses of all pieces together must equal an uninterrupted
run's bit for bit. The runs are in-process (single rank, gloo) to keep this within CI's budget; the launch
scripts' signal paths through torchrun, tee and several ranks are tested in test_preemption_launch.py.
"""

import contextlib
import json
import os
import random
import signal

import pytest

from tests.distributed.sft_common import read_log

TRIALS = 20
SEED = 16
ITERS = 2 * TRIALS + 2  # a trial trains at most 2 steps: there are always steps left to interrupt
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 2-layer model with a 1k vocabulary (a step takes milliseconds), random initialisation (seeded),
    and synthetic packed data."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp = tmp_path_factory.mktemp("preempt")
    hf = make_tiny_qwen2(os.path.join(CACHE, "tiny_vocab1k"), num_layers=2, vocab_size=1024, seed=3)
    data = str(tmp / "packed")
    write_synthetic_sft(data, 16, 32, packed=True, seed=0)
    return tmp, hf, data


def _args(data, hf, log, save):
    return [str(a) for a in ["--data-path", data, "--hf-config", hf, "--seq-length", 32, "--micro-batch-size", 1,
            "--global-batch-size", 2, "--train-iters", ITERS, "--lr", "1e-3", "--lr-warmup-iters", 1,
            "--log-interval", 1, "--log-json", log, "--seed", 7, "--save", save, "--load", save,
            "--save-interval", 2]]


def _train(argv) -> int:
    from megatron_autoalign.training.loop import main
    from megatron_autoalign.training.sft_task import SFTTask

    return main(SFTTask, argv)


@contextlib.contextmanager
def _signal_at(owner, name: str, call: int, signum: int):
    """Send ``signum`` to this process when ``owner.name`` is called for the ``call``-th time (1-based)."""
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)  # the handler runs right here, in the main thread
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


def _injection_point(rng: random.Random):
    """(description, owner, attribute, call number): where the next trial's signal lands."""
    from megatron_autoalign.training import checkpointing, loop, step_log
    from megatron_autoalign.training.sft_task import SFTTask

    step = rng.randint(1, 2)  # in the first or second step of the restarted run
    micro_batches = 2  # global batch 2 / micro-batch 1
    return rng.choice([
        ("set-up (loading the checkpoint)", loop.Trainer, "_load", 1),
        (f"forward pass of step {step}", SFTTask, "forward_step", (step - 1) * micro_batches + rng.randint(1, 2)),
        (f"optimizer step {step}", loop, "optimizer_step", step),
        ("the first checkpoint save, its files written, its tracker not yet", checkpointing, "write_tracker", 1),
        (f"log line {step}", step_log.StepLogger, "flush", step),
    ])


def _read(log) -> list:
    return read_log(log) if os.path.exists(log) else []


def _tracker(save) -> int | None:
    path = os.path.join(save, "latest_checkpointed_iteration.txt")
    return int(open(path).read()) if os.path.exists(path) else None


@pytest.mark.timeout(600)
def test_signals_at_random_points_resume_bitwise(setup):
    tmp, hf, data = setup
    ref_log = str(tmp / "reference.jsonl")
    assert _train(_args(data, hf, ref_log, str(tmp / "reference"))) == 0
    reference = {r["iteration"]: r["loss"] for r in read_log(ref_log)}
    assert sorted(reference) == list(range(1, ITERS + 1))

    from megatron_autoalign.training.preemption import EXIT_STOPPED

    rng = random.Random(SEED)
    save, log = str(tmp / "interrupted"), str(tmp / "interrupted.jsonl")
    outcomes = []
    for trial in range(TRIALS):
        where, owner, attr, call = _injection_point(rng)
        signum = rng.choice(SIGNALS)
        before, logged_before = _tracker(save) or 0, len(_read(log))
        with _signal_at(owner, attr, call, signum) as calls:
            rc = _train(_args(data, hf, log, save))
        assert calls[0] >= call, f"trial {trial}: the signal point ({where}) was never reached"
        records = _read(log)[logged_before:]
        stop_at = records[-1]["iteration"] if records else before
        context = f"trial {trial}: {signal.Signals(signum).name} during {where}"
        assert rc == EXIT_STOPPED, f"{context}: exit code {rc}"
        # one complete checkpoint at the stop iteration, named by the tracker
        assert (_tracker(save) or 0) == stop_at, context
        done = os.path.join(save, f"iter_{stop_at:07d}")
        assert stop_at == 0 or all(os.path.exists(os.path.join(done, f)) for f in ("metadata.json", "common.pt")), context
        outcomes.append((where, signal.Signals(signum).name, stop_at - before))
    assert _train(_args(data, hf, log, save)) == 0  # the rest of the run
    resumed = read_log(log)
    assert [r["iteration"] for r in resumed] == list(range(1, ITERS + 1))  # every step exactly once
    assert [r["loss"] for r in resumed] == [reference[i] for i in range(1, ITERS + 1)]  # bitwise
    steps = [n for *_, n in outcomes]
    assert steps.count(0) <= TRIALS // 3 and max(steps) <= 2, outcomes  # the points were spread as intended
    print(json.dumps(outcomes))


def _short_args(data, hf, log, save, iters, *extra):
    args = _args(data, hf, log, save)
    args[args.index("--train-iters") + 1] = str(iters)
    args[args.index("--save-interval") + 1] = "1"
    return args + [str(e) for e in extra]


def _one_error_line(capsys) -> str:
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.timeout(600)
def test_damaged_checkpoint_changed_data_lock_and_keep_last(setup, capsys):
    """A damaged latest checkpoint: one line naming the file, the iteration and the earlier complete ones;
    --ckpt-step resumes from one of those. --keep-last-checkpoints keeps the newest K. Other data: refused
    unless --allow-data-change. A live run's lock: refused."""
    import socket

    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp, hf, data = setup
    save, log = str(tmp / "damaged"), str(tmp / "damaged.jsonl")
    assert _train(_short_args(data, hf, log, save, 4, "--keep-last-checkpoints", 2)) == 0
    assert sorted(p for p in os.listdir(save) if p.startswith("iter_")) == ["iter_0000003", "iter_0000004"]
    loss_at_4 = read_log(log)[-1]["loss"]

    victim = os.path.join(save, "iter_0000004", "__0_0.distcp")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    capsys.readouterr()
    assert _train(_short_args(data, hf, log, save, 6)) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {victim}: truncated (") and line.endswith(
        "checkpoint iteration 4 is damaged; complete earlier iterations: 3; resume from one with --ckpt-step 3")
    assert _train(_short_args(data, hf, log, save, 6, "--ckpt-step", 3)) == 0
    records = read_log(log)[4:]
    assert [r["iteration"] for r in records] == [4, 5, 6] and records[0]["loss"] == loss_at_4  # the same step again

    other = str(tmp / "other")
    write_synthetic_sft(other, 16, 32, packed=True, seed=1)  # re-preprocessed: other rows, same shape
    capsys.readouterr()
    assert _train(_short_args(other, hf, log, save, 8)) == 2
    assert "the training data changed since" in _one_error_line(capsys)
    assert _train(_short_args(other, hf, log, save, 7, "--allow-data-change")) == 0

    lock = os.path.join(save, "training.lock")
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getppid(), "started": "earlier"}, f)  # a live process
    capsys.readouterr()
    assert _train(_short_args(data, hf, log, save, 9)) == 2
    assert f"another run (host {socket.gethostname()}, pid {os.getppid()}, started earlier)" in _one_error_line(capsys)
    os.remove(lock)
