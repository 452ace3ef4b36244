"""On 2 GPUs: a few bf16 DPO steps of a Qwen2.5-0.5B-shaped model (random weights), through the real loop.

Online reference (TP2 + SP) and precomputed reference (scoring pass, then training without a reference
model) on the same synthetic pairs, every step on ALL pairs. Checks: every metric finite; at step 1
the policy IS the reference, so the margin is 0 and the loss ln 2 (same kernels, same weights: exact up to
bf16 matmul determinism, 1e-3); full-batch steps lower the loss; precomputed follows online (2e-2).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "..", "workers", "dpo_runs.py")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PAIRS, SEQ, ITERS = 16, 512, 3


@pytest.fixture(scope="module")
def qwen_05b(tmp_path_factory):
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    d = tmp_path_factory.mktemp("q05")
    hf = make_tiny_qwen2(str(d / "hf"), tied=True, num_layers=24, hidden_size=896, intermediate_size=4864,
                         num_heads=14, num_kv_heads=2, dtype=torch.bfloat16, seed=0)
    mg = str(d / "mg")
    subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", hf, "--save-path", mg,
                    "--model-size", "0.5B", "--precision", "bf16", "--no-progress"], check=True)
    return hf, mg


def test_dpo_bf16_steps_on_two_gpus(qwen_05b, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from megatron_autoalign.dpo.synthetic import make_pairs, write_pairs

    hf, mg = qwen_05b
    write_pairs(str(tmp_path / "pairs"), make_pairs(PAIRS, SEQ, 151643, seed=1), SEQ, packed=False, vocab=151936)

    def argv(name, *extra):
        return ["--data-path", str(tmp_path / "pairs"), "--pretrained-checkpoint", mg, "--hf-config", hf, "--bf16",
                "--tensor-model-parallel-size", "2", "--sequence-parallel", "--micro-batch-size", "2",
                "--global-batch-size", str(PAIRS), "--train-iters", str(ITERS), "--lr", "1e-5",
                "--lr-decay-style", "constant", "--no-shuffle", "--log-json", str(tmp_path / f"{name}.json"), *extra]

    spec = [{"kind": "train", "argv": argv("online")},
            {"kind": "score", "argv": argv("score")},
            {"kind": "train", "argv": argv("precomputed", "--reference", "precomputed")}]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    torchrun(WORKER, 2, tmp_path / "spec.json", timeout=900)
    logs = {n: [json.loads(x) for x in (tmp_path / f"{n}.json").read_text().splitlines()] for n in ("online", "precomputed")}
    for name, log in logs.items():
        assert len(log) == ITERS
        for rec in log:
            for k, v in rec.items():
                assert v is None or math.isfinite(v), f"{name} iteration {rec['iteration']}: {k} = {v}"
        first = log[0]
        assert abs(first["loss"] - math.log(2)) < 1e-3 and abs(first["rewards/margin"]) < 1e-2, (name, first)
        assert first["logps/chosen"] < -100  # real sums over hundreds of tokens, not zeros
        assert log[-1]["loss"] < first["loss"], (name, [r["loss"] for r in log])
    for a, b in zip(logs["online"], logs["precomputed"]):
        assert abs(a["loss"] - b["loss"]) < 2e-2 * max(1.0, abs(a["loss"])), (a, b)
