"""The training log reads its GPU values one step late (so the host never waits for the optimizer update):
each logged line must still carry its own step's loss, and lines must come out in order around validation
passes and checkpoints. Checked on 2 ranks (data parallel: the SIGTERM flag goes over a CPU group) against
the loss that each step's metric reduction produced, recorded by the worker."""

import json
import os
import re

import pytest

from tests.distributed.launch import torchrun
from tests.distributed.sft_common import base_args, convert

WORKER = os.path.join(os.path.dirname(__file__), "log_order_worker.py")


@pytest.mark.timeout(300)
def test_log_lines_carry_their_own_step_in_order(tiny_4layer_dir, tmp_path):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    data = str(tmp_path / "packed")
    write_synthetic_sft(data, 40, 64, packed=True, seed=5)
    ckpt = convert(tiny_4layer_dir, str(tmp_path / "mg"))
    log, out = tmp_path / "log.jsonl", tmp_path / "truth.json"
    args = base_args(data, ckpt, str(log), iters=5, extra=[
        "--split", "80,20,0", "--eval-interval", 2, "--eval-iters", 1, "--save", tmp_path / "ckpt",
        "--save-interval", 3])
    stdout = torchrun(WORKER, 2, out, "--", *args)

    truth = json.loads(out.read_text())["truth"]
    records = [json.loads(line) for line in open(log)]
    train = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4, 5]
    assert len(truth) == 5
    for r, t in zip(train, truth):
        assert abs(r["loss"] - t) < 1e-6, (r, t)
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    assert len({round(t, 6) for t in truth}) == 5  # distinct per step, so a shifted log could not pass

    # stdout: iteration k, then (k = 2, 4) its validation, (k = 3, 5) its checkpoint, then iteration k + 1
    events = []
    for line in stdout.splitlines():
        if m := re.search(r"\] iteration (\d+)/5 \|", line):
            events.append(("train", int(m.group(1))))
        elif m := re.match(r"validation at iteration (\d+):", line):
            events.append(("valid", int(m.group(1))))
        elif m := re.search(r"saved checkpoint .*iter_0*(\d+)", line):
            events.append(("save", int(m.group(1))))
    assert events == [("train", 1), ("train", 2), ("valid", 2), ("train", 3), ("save", 3), ("train", 4),
                      ("valid", 4), ("train", 5), ("save", 5), ("valid", 5)], stdout[-3000:]
