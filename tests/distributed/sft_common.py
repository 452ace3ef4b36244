"""Shared set-up for the SFT distributed tests: a converted tiny checkpoint, synthetic data, runs."""

import json
import os
import subprocess
import sys

from tests.distributed.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "sft_loss_worker.py")


def convert(hf_dir: str, out_dir: str) -> str:
    """HF -> Megatron torch_dist release checkpoint through the converter's CLI (cached by path)."""
    if not os.path.isfile(os.path.join(out_dir, "latest_checkpointed_iteration.txt")):
        subprocess.run(
            [sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", hf_dir,
             "--save-path", out_dir, "--precision", "fp32", "--no-progress"],
            check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    return out_dir


def base_args(data: str, ckpt: str, log: str, iters: int = 5, extra=()) -> list:
    return ["--data-path", data, "--pretrained-checkpoint", ckpt, "--seq-length", "64",
            "--micro-batch-size", "1", "--global-batch-size", "4", "--train-iters", str(iters),
            "--lr", "1e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "1", "--log-interval", "1",
            "--log-json", log, "--seed", "7", *map(str, extra)]


def run_all(tmp, nproc: int, runs: dict, timeout: int = 600) -> dict:
    """runs: name -> argv (with --log-json tmp/name.jsonl); returns name -> list of step records."""
    spec = tmp / f"runs_{nproc}.json"
    spec.write_text(json.dumps(list(runs.values())))
    torchrun(WORKER, nproc, spec, timeout=timeout)
    return {name: read_log(argv[argv.index("--log-json") + 1]) for name, argv in runs.items()}


def read_log(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if '"loss"' in line]
