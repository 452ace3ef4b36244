"""End to end on the example chat data with the tiny model, through the user-facing scripts:
HF -> Megatron (converter) -> preprocess (packed) -> sft_conv.sh 30 steps on CPU (loss falls clearly)
-> Megatron -> HF -> transformers loads it, generates, and scores the training data better than the
original weights did."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")


def _run(cmd, **env):
    # the scripts call `python`: make it this interpreter (the venv's)
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    full = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", "PYTHON": sys.executable,
            "PATH": path, **env}
    p = subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=REPO, timeout=600)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.timeout(900)
def test_convert_preprocess_train_convert_back(tiny_4layer_dir, tmp_path):
    from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer

    hf = tmp_path / "hf"
    shutil.copytree(tiny_4layer_dir, hf)
    tok_dir = build_qwen2_tokenizer(os.path.join(CACHE, "tokenizer"))
    for name in os.listdir(tok_dir):
        if not name.startswith("."):
            shutil.copy(os.path.join(tok_dir, name), hf / name)
    py = sys.executable
    _run([py, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", str(hf), "--save-path",
          str(tmp_path / "mg"), "--precision", "fp32", "--no-progress"])
    _run(["bash", "toolkits/sft_conv_data_preprocessing/run_build_idxmap_sft_conv_dataset.sh",
          os.path.join(REPO, "examples", "chat_sft.json"), "conversations", "Qwen2Tokenizer", "256",
          str(tmp_path / "data" / "sft"), str(hf), "0", "qwen", "--packing", "--no-progress"])
    out = tmp_path / "out"
    log = tmp_path / "train.jsonl"
    stdout = _run(
        ["bash", "scripts_megatron/train/qwen2_5/sft_conv.sh"],
        DATASET_PATH=str(tmp_path / "data" / "sft"), PRETRAIN_CHECKPOINT_PATH=str(tmp_path / "mg"),
        OUTPUT_BASEPATH=str(out), MODEL_SIZE="auto", TP="1", PP="1", CP="1", GPUS_PER_NODE="1", DO="false",
        BATCH_SIZE="1", GLOBAL_BATCH_SIZE="2", SEQ_LEN="256", PAD_LEN="256", LR="3e-3", MIN_LR="3e-4",
        TRAIN_ITERS="30", SAVE_INTERVAL="100", EXTRA_ARGS=f"--log-json {log}",
    )
    assert "torch.distributed.run" in stdout.splitlines()[0]  # the script prints its command first
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < first - 1.5, losses  # falls clearly (about 12 -> 8 in practice)

    run_dir = next((out / "checkpoint").iterdir())
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "30"
    _run([py, "-m", "megatron_autoalign.checkpoint.convert", "--mg2hf", "--load-path", str(run_dir),
          "--save-path", str(tmp_path / "hf_out"), "--hf-ckpt-path", str(hf), "--precision", "fp32", "--no-progress"])
    check = _run([py, "-c", _CHECK, str(tmp_path / "hf_out"), str(hf)])
    result = json.loads(check.strip().splitlines()[-1])
    assert result["new_tokens"] > 0
    assert result["trained_loss"] < result["original_loss"] - 1.0, result


_CHECK = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
trained_dir, original_dir = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(trained_dir)
trained = AutoModelForCausalLM.from_pretrained(trained_dir).eval()
original = AutoModelForCausalLM.from_pretrained(original_dir).eval()
conv = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help you today?"}]
x = tok(tok.apply_chat_template(conv, tokenize=False), return_tensors="pt").input_ids
prompt = tok(tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True), return_tensors="pt").input_ids
with torch.no_grad():
    gen = trained.generate(prompt, max_new_tokens=8, do_sample=False)
    res = {"trained_loss": trained(x, labels=x).loss.item(), "original_loss": original(x, labels=x).loss.item(),
           "new_tokens": int(gen.shape[1] - prompt.shape[1]), "text": tok.decode(gen[0, prompt.shape[1]:])}
print(json.dumps(res))
"""
