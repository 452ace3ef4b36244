"""Failure handling of the SFT entry point: NaN steps are skipped and counted (then fatal past the
limit), SIGTERM saves a resumable checkpoint and exits 75, bad set-ups fail at start with one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.distributed.launch import free_port
from tests.distributed.sft_common import base_args, convert, read_log

NAN_WORKER = os.path.join(os.path.dirname(__file__), "sft_nan_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def setup(tiny_4layer_dir, tmp_path_factory):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp = tmp_path_factory.mktemp("sft_robust")
    ckpt = convert(tiny_4layer_dir, str(tmp / "mg"))
    data = str(tmp / "packed")
    write_synthetic_sft(data, 32, 64, packed=True, seed=0)
    return tmp, ckpt, data


def _sft(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "megatron_autoalign.training.sft", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.mark.timeout(300)
def test_nan_steps_are_skipped_then_fatal(setup):
    tmp, ckpt, data = setup
    log = tmp / "nan.jsonl"
    args = base_args(data, ckpt, str(log), iters=6, extra=["--max-skipped-steps", 1])
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
                        NAN_WORKER, "2,4", "--", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)
    recs = read_log(str(log))
    assert p.returncode != 0, p.stdout[-2000:]
    assert "2 steps skipped for NaN/inf loss or grad norm (limit --max-skipped-steps 1)" in p.stderr
    assert [r["iteration"] for r in recs] == [1, 2, 3]  # stopped at the second NaN step (4), before logging it
    assert [r["skipped_steps"] for r in recs] == [0, 1, 1]
    assert recs[1]["loss"] is None or recs[1]["loss"] != recs[1]["loss"]  # NaN loss reported for step 2
    assert recs[1]["lr"] == recs[0]["lr"]  # skipped: the schedule did not advance
    assert recs[2]["lr"] < recs[1]["lr"]  # step 3 trained normally


@pytest.mark.timeout(300)
def test_sigterm_saves_and_exits_stopped(setup):
    tmp, ckpt, data = setup
    save = tmp / "sigterm_ckpt"
    log = tmp / "sigterm.jsonl"
    args = base_args(data, ckpt, str(log), iters=10000, extra=["--save", save])
    proc = subprocess.Popen([sys.executable, "-m", "megatron_autoalign.training.sft", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]  # EXIT_STOPPED: not finished, resume by running again
    assert "stopping at iteration" in out and "SIGTERM" in out
    it = int((save / "latest_checkpointed_iteration.txt").read_text())
    assert it >= 2 and (save / f"iter_{it:07d}" / "metadata.json").exists()
    assert it == read_log(str(log))[-1]["iteration"]


def _one_line_error(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stdout[-1500:], p.stderr[-1500:])
    errors = [l for l in p.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, p.stderr[-1500:]
    for f in fragments:
        assert f in errors[0], errors[0]


@pytest.mark.timeout(300)
def test_startup_checks_are_one_line_errors(setup, tmp_path):
    tmp, ckpt, data = setup
    log = str(tmp_path / "x.jsonl")
    _one_line_error(_sft(base_args(data, ckpt, log) + ["--seq-length", 32]), "seq_len 64", "--seq-length is 32")
    _one_line_error(_sft(base_args(data, ckpt, log) + ["--micro-batch-size", 3]), "--global-batch-size 4", "micro-batch-size 3")
    _one_line_error(_sft(base_args(data, ckpt, log) + ["--tensor-model-parallel-size", 2]), "world size 1", "TP(2)")
    _one_line_error(_sft(base_args(data, ckpt, log) + ["--model-size", "7B"]), "model size 7B does not match")
    # tokenizer larger than the model's vocabulary
    big = str(tmp_path / "bigvocab")
    for suffix in ("_input_ids.bin", "_input_ids.idx", "_labels.bin", "_labels.idx"):
        os.link(data + suffix, big + suffix)
    manifest = json.load(open(data + "_manifest.json"))
    manifest["tokenizer"]["vocab_size"] = 200000
    json.dump(manifest, open(big + "_manifest.json", "w"))
    _one_line_error(_sft(base_args(big, ckpt, log)), "tokenizer has 200000 tokens", "model vocab is 151936")
    # checkpoint whose shapes disagree with the model config (2-layer, 2-KV-head config vs 4-layer checkpoint)
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    other = make_tiny_qwen2(str(tmp_path / "other"), num_layers=4, num_kv_heads=2, seed=5)
    _one_line_error(_sft(base_args(data, ckpt, log) + ["--hf-config", other]), "checkpoint does not match",
                    "linear_qkv.weight: checkpoint [4, 192, 64], model [4, 128, 64]")
