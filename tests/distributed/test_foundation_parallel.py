"""Foundation acceptance: plain megatron-core training of our Qwen2 GPTModel gives the same losses at
TP2·PP2 (with sequence parallel) as at TP1·PP1 from the same initial weights (fp32, 1e-5)."""

import json
import os

import pytest

from tests.distributed.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "..", "workers", "foundation_losses.py")


@pytest.mark.timeout(600)
def test_tp2_pp2_matches_tp1(tiny_4layer_dir, tmp_path):
    ckpt = tmp_path / "init"
    torchrun(WORKER, 1, tiny_4layer_dir, ckpt, tmp_path / "tp1.json", 1, 1, 0, 0, "fp32")
    torchrun(WORKER, 4, tiny_4layer_dir, ckpt, tmp_path / "tp2pp2.json", 2, 2, 1, 0, "fp32")
    reference = json.loads((tmp_path / "tp1.json").read_text())
    parallel = json.loads((tmp_path / "tp2pp2.json").read_text())
    assert len(reference) == len(parallel) == 3
    assert reference[0] > 5.0  # a real cross-entropy over a 152k vocabulary, not a constant
    for a, b in zip(reference, parallel):
        assert abs(a - b) < 1e-5, (reference, parallel)
    assert reference[-1] != reference[0]  # the optimizer actually stepped
