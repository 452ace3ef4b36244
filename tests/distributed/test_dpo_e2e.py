"""End to end on the example preference data, through the user-facing scripts: preprocessing
(run_build_idxmap_dpo_dataset.sh) -> convert -> dpo_conv.sh (CPU, 1 process). A tiny random model
must learn to prefer the polite/correct replies: validation reward accuracy over ALL 150 pairs > 0.9
after two steps that saw only 56 of them (the preference is a pattern, not memorised pairs)."""
import json
import os
import subprocess
import sys

import pytest

from tests.workers.dpo_common import convert

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")


def sh(*cmd, env=None):
    full = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=full, cwd=REPO)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tokenizer_dir():
    """The offline Qwen2.5 tokenizer (same cache as tests/unit's qwen_tokenizer_dir)."""
    from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer

    return build_qwen2_tokenizer(os.path.join(CACHE, "tokenizer"))


@pytest.fixture(scope="module")
def tiny_model():
    """A 2-layer, 32-wide tied Qwen2 with the real vocabulary, converted to Megatron (cached)."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    hf = make_tiny_qwen2(os.path.join(CACHE, "dpo_e2e_hf"), tied=True, num_layers=2, hidden_size=32,
                         intermediate_size=64, num_heads=4, num_kv_heads=2, seed=7)
    return convert(hf, os.path.join(CACHE, "dpo_e2e_mg"))


@pytest.mark.timeout(600)
def test_reward_accuracy_rises_on_example_data(tmp_path, tokenizer_dir, tiny_model):
    prefix = tmp_path / "data" / "pref"
    sh("bash", "toolkits/dpo_data_preprocessing/run_build_idxmap_dpo_dataset.sh", "examples/preference.json",
       "conversations", "Qwen2Tokenizer", 64, prefix, tokenizer_dir, 0, "chatml", "--packing",
       "--workers", "1", "--no-progress")
    manifest = json.loads((tmp_path / "data" / "pref_manifest.json").read_text())
    assert manifest["num_pairs"] == 150 and manifest["skipped"] == {}
    rows = manifest["num_rows"]
    log = tmp_path / "log.json"
    env = {"DATASET_PATH": str(prefix), "VALID_DATASET_PATH": str(prefix), "PRETRAIN_CHECKPOINT_PATH": tiny_model,
           "OUTPUT_BASEPATH": str(tmp_path / "out"), "GPUS_PER_NODE": "1", "TP": "1", "PP": "1", "DO": "false",
           "PRECISION": "fp32", "MODEL_SIZE": "auto", "SEQ_LEN": "64", "BATCH_SIZE": "4", "GLOBAL_BATCH_SIZE": "28",
           "TRAIN_ITERS": "2", "LR": "5e-3", "LR_DECAY_STYLE": "constant", "WARMUP_FRACTION": "0",
           "BETA": "0.1", "LOSS_TYPE": "sigmoid", "REF": "precomputed", "OMP_NUM_THREADS": "2",
           "EXTRA_ARGS": f"--log-json {log} --eval-iters {-(-rows // 28)}"}
    sh("bash", "scripts_megatron/train/qwen2_5/dpo_conv.sh", env=env)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    train, valid = [r for r in records if "loss" in r], [r for r in records if "valid/loss" in r]
    assert train[0]["rewards/accuracy"] == 0.0 and abs(train[0]["loss"] - 0.693147) < 1e-5  # policy == reference
    assert valid and valid[-1]["valid/rewards/accuracy"] > 0.9, valid
    assert valid[-1]["valid/loss"] < 0.5 and valid[-1]["valid/rewards/margin"] > 0
    entry = json.loads((tmp_path / "data" / "pref_manifest.json").read_text())["reference"]
    assert entry["checkpoint"] == os.path.abspath(tiny_model)  # the scoring pass ran and recorded itself
