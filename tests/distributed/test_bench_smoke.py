"""The component benchmark builds its step from the training loop's functions; on CPU, with a tiny model,
it must still run end to end and report a real loss (so the GPU benchmark cannot silently rot)."""

import json
import math
import os

from tests.distributed.launch import torchrun

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "bench_model_step.py")


def test_component_bench_runs_the_training_step_on_cpu(tiny_4layer_dir, tmp_path):
    out = tmp_path / "bench.json"
    torchrun(BENCH, 1, "--hf-config", tiny_4layer_dir, "--seq-length", 64, "--packed-docs", 2, "--steps", 2,
             "--warmup", 1, "--recompute-swiglu", "--json", out)
    result = json.loads(out.read_text())["results"][0]
    assert result["system"] == "ours_local_spec_tp1_packed2_recompute-swiglu"
    assert result["tokens_per_s"] > 0
    # random tokens over a 152k vocabulary: the loss starts near ln(151936) = 11.9
    assert math.isfinite(result["last_loss"]) and 8.0 < result["last_loss"] < 14.0
