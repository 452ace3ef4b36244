"""GPU: convert a random Qwen3-0.6B-shaped model (bf16; head_dim 128 while hidden/heads is 64; q/k norms) at TP2·PP2
and check --verify parity against transformers' Qwen3ForCausalLM on the GPU (cosine >= 0.999)."""

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.timeout(900)
def test_convert_qwen3_0_6b_bf16_verify_on_gpu(tmp_path):
    from megatron_autoalign.models.qwen3 import QWEN3_SIZES
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen3

    s = QWEN3_SIZES["0.6B"]
    cache = os.path.join(os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "random_qwen3_0_6B_bf16")
    hf = make_tiny_qwen3(cache, tied=True, num_layers=s.num_layers, hidden_size=s.hidden_size,
                         intermediate_size=s.ffn_hidden_size, num_heads=s.num_attention_heads,
                         num_kv_heads=s.num_key_value_heads, head_dim=s.head_dim, vocab_size=s.vocab_size,
                         dtype=torch.bfloat16)
    p = subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--model-size", "qwen3-0.6B",
                        "--load-path", hf, "--save-path", str(tmp_path / "mg"), "--tp", "2", "--pp", "2",
                        "--precision", "bf16", "--no-progress"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    p = subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.verify", "--hf-path", hf,
                        "--megatron-path", str(tmp_path / "mg"), "--dtype", "bf16", "--seq-len", "128"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(l for l in p.stdout.splitlines() if l.startswith("verify:"))
    print(line)
    cosine = float(line.split("cosine ")[1].split()[0])
    assert "cuda" in line and cosine >= 0.999, line
