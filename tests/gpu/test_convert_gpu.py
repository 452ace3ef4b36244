"""GPU: convert a random Qwen2.5-0.5B-shaped model (bf16) and check --verify parity on the GPU (cosine >= 0.999)."""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.timeout(900)
def test_convert_0_5b_bf16_verify_on_gpu(tmp_path):
    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    s = QWEN2_5_SIZES["0.5B"]
    cache = os.path.join(os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "random_0_5B_bf16")
    hf = make_tiny_qwen2(cache, tied=True, num_layers=s.num_layers, hidden_size=s.hidden_size,
                         intermediate_size=s.ffn_hidden_size, num_heads=s.num_attention_heads,
                         num_kv_heads=s.num_key_value_heads, vocab_size=s.vocab_size, dtype=torch.bfloat16)
    p = subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--model-size", "0.5B",
                        "--load-path", hf, "--save-path", str(tmp_path / "mg"), "--tp", "2", "--pp", "2",
                        "--precision", "bf16", "--no-progress"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    p = subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.verify", "--hf-path", hf,
                        "--megatron-path", str(tmp_path / "mg"), "--dtype", "bf16", "--seq-len", "128"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(l for l in p.stdout.splitlines() if l.startswith("verify:"))
    cosine = float(line.split("cosine ")[1].split()[0])
    assert "cuda" in line and cosine >= 0.999, line
