"""Signals to parts of a real launch (sft_conv.sh -> torchrun -> 2 trainer ranks, output through tee), the
way a scheduler or a user sends them, and the resume after each: the losses of the pieces equal an
uninterrupted launch's bit for bit.

1. SIGTERM to every process of the tree after a first save (what `scancel` does to a job's processes):
   the script, torchrun, tee, the trainers, and the processes megatron's save started in them.
2. tee killed (the log pipe is gone), then SIGUSR1 to rank 1 alone: both ranks stop after the same step.
3. The run resumes to its end and exits 0.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.distributed.sft_common import convert, read_log
from tests.distributed.test_preemption import CACHE, setup  # noqa: F401  (the module's fixture)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERS = 60


def _env(hf_mg, data, out, log):
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHON": sys.executable, "PATH": path,
            "DATASET_PATH": data, "PRETRAIN_CHECKPOINT_PATH": hf_mg, "OUTPUT_BASEPATH": out, "MODEL_SIZE": "auto",
            "TP": "1", "PP": "1", "CP": "1", "GPUS_PER_NODE": "2", "DO": "false", "BATCH_SIZE": "1",
            "GLOBAL_BATCH_SIZE": "2", "SEQ_LEN": "32", "PAD_LEN": "32", "LR": "1e-3", "MIN_LR": "1e-4",
            "TRAIN_ITERS": str(ITERS), "SAVE_INTERVAL": "2", "EXTRA_ARGS": f"--log-json {log}"}


def _launch(env, console):
    return subprocess.Popen(["bash", "scripts_megatron/train/qwen2_5/sft_conv.sh"], cwd=REPO, env=env,
                            stdout=open(console, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_steps(proc, log, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {n}"
        if os.path.exists(log) and len(read_log(log)) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {n} within {timeout} s")


def _descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _find(pid: int, predicate) -> int:
    for p in _descendants(pid):
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{p}/environ", "rb").read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if predicate(cmd, env):
            return p
    raise AssertionError("process not found")


def _tracker(out) -> int:
    run_dir = next((out / "checkpoint").iterdir())
    return int((run_dir / "latest_checkpointed_iteration.txt").read_text())


@pytest.mark.timeout(900)
def test_launch_script_signals_resume_bitwise(setup, tmp_path):  # noqa: F811
    _, hf, data = setup
    mg = convert(hf, os.path.join(CACHE, "tiny_vocab1k_mg"))

    ref_log = str(tmp_path / "ref.jsonl")
    ref = _launch(_env(mg, data, str(tmp_path / "ref"), ref_log), tmp_path / "ref.out")
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.out").read_text()[-3000:]
    reference = [r["loss"] for r in read_log(ref_log)]
    assert len(reference) == ITERS

    out, log = tmp_path / "out", str(tmp_path / "run.jsonl")
    env = _env(mg, data, str(out), log)

    # 1. every process of the tree, once a save has started megatron's helper processes
    run = _launch(env, tmp_path / "1.out")
    _wait_for_steps(run, log, 3)
    for pid in [run.pid, *_descendants(run.pid)]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    assert run.wait(timeout=300) == 75, (tmp_path / "1.out").read_text()[-3000:]
    first = len(read_log(log))
    assert _tracker(out) == read_log(log)[-1]["iteration"] == first
    lines = (next((out / "log").iterdir())).read_text()
    assert f"stopping at iteration {first} (SIGTERM)" in lines  # tee outlived the signal: the log says how it ended

    # 2. the log pipe dies, then one rank alone gets the signal
    run = _launch(env, tmp_path / "2.out")
    _wait_for_steps(run, log, first + 2)
    os.kill(_find(run.pid, lambda cmd, _: os.path.basename(cmd[0]) == b"tee"), signal.SIGKILL)
    rank1 = _find(run.pid, lambda cmd, env: env.get(b"RANK") == b"1" and b"megatron_autoalign.training.sft" in cmd)
    os.kill(rank1, signal.SIGUSR1)
    assert run.wait(timeout=300) == 75, (tmp_path / "2.out").read_text()[-3000:]
    second = read_log(log)[-1]["iteration"]
    assert _tracker(out) == second > first + 1
    assert not any(f.name == "training.lock" for f in next((out / "checkpoint").iterdir()).iterdir())

    # 3. to the end
    run = _launch(env, tmp_path / "3.out")
    assert run.wait(timeout=600) == 0, (tmp_path / "3.out").read_text()[-3000:]
    pieces = read_log(log)
    assert [r["iteration"] for r in pieces] == list(range(1, ITERS + 1))
    assert [r["loss"] for r in pieces] == reference  # bitwise
    print(json.dumps({"stops": [first, second]}))


def test_missing_checkpoint_path_is_named(tmp_path):
    env = _env(str(tmp_path / "no_such_mg"), str(tmp_path / "data"), str(tmp_path / "out"), str(tmp_path / "x.jsonl"))
    p = subprocess.run(["bash", "scripts_megatron/train/qwen2_5/sft_conv.sh"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == (f"error: PRETRAIN_CHECKPOINT_PATH={tmp_path}/no_such_mg: no such directory "
                                "(a converted Megatron checkpoint)")
