"""On GPU: plain megatron-core training of a Qwen2 GPTModel at TP1 and TP2 agrees (fp32: 1e-4; bf16 first step: 2e-2)."""

import json
import os

import pytest
import torch

from tests.distributed.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "..", "workers", "foundation_losses.py")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 2e-2)])
def test_tp2_matches_tp1_on_gpu(tiny_4layer_dir, tmp_path, dtype, tol):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    ckpt = tmp_path / "init"
    torchrun(WORKER, 1, tiny_4layer_dir, ckpt, tmp_path / "tp1.json", 1, 1, 0, 0, dtype)
    torchrun(WORKER, 2, tiny_4layer_dir, ckpt, tmp_path / "tp2.json", 2, 1, 1, 0, dtype)
    tp1 = json.loads((tmp_path / "tp1.json").read_text())
    tp2 = json.loads((tmp_path / "tp2.json").read_text())
    assert all(map(torch.isfinite, torch.tensor(tp1 + tp2)))
    assert abs(tp1[0] - tp2[0]) < tol, (tp1, tp2)
    if dtype == "fp32":
        assert max(abs(a - b) for a, b in zip(tp1, tp2)) < tol, (tp1, tp2)
