"""Ground truth for the SFT loss: our per-token CE on packed rows (2 rows x several conversations,
flattened into one thd micro-batch) equals HF Qwen2ForCausalLM's CE on each conversation run
separately (fp32, 1e-5), and equals our own model on each conversation alone, i.e. no attention or
label leaks across document boundaries."""

import json
import os

import pytest

from tests.distributed.launch import torchrun
from tests.distributed.sft_common import convert

WORKER = os.path.join(os.path.dirname(__file__), "sft_parity_worker.py")


@pytest.mark.timeout(300)
def test_packed_loss_equals_hf_per_document(tiny_4layer_dir, tmp_path):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    ckpt = convert(tiny_4layer_dir, str(tmp_path / "mg"))
    data = str(tmp_path / "packed")
    write_synthetic_sft(data, 16, 64, packed=True, max_docs=4, seed=3)
    out = tmp_path / "parity.json"
    torchrun(WORKER, 1, tiny_4layer_dir, out, "--", "--data-path", data, "--pretrained-checkpoint", ckpt,
             "--micro-batch-size", 2, "--train-iters", 1)
    r = json.loads(out.read_text())
    assert r["tokens"] > 50
    assert r["max_diff_vs_hf"] < 1e-5, r
    assert r["max_diff_packed_vs_alone"] < 1e-5, r
