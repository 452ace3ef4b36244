"""Conversion benchmark: a random Qwen2.5-1.5B-shaped HF checkpoint (bf16), HF -> Megatron -> HF on this machine.

    python bench/bench_convert.py [--size 1.5B] [--format torch_dist] [--workdir DIR]

Each direction runs in its own process; reported: wall seconds and peak RSS of that process (and of its
largest child: dist_checkpointing forks writer processes that share the parent's pages). Targets
(issue 3): under 30 s each way, peak RSS under 1.5x the checkpoint size. Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# Runs in a fresh interpreter: the convert entry point, then this process's own peak RSS.
_CHILD = r"""
import json, resource, sys
from megatron_autoalign.checkpoint.convert import main
rc = main(sys.argv[1:])
print("BENCH_RSS " + json.dumps({"rc": rc,
    "self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def make_checkpoint(size: str, out_dir: str) -> str:
    import torch

    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    s = QWEN2_5_SIZES[size]
    return make_tiny_qwen2(
        out_dir, tied=s.tie_word_embeddings, num_layers=s.num_layers, hidden_size=s.hidden_size,
        intermediate_size=s.ffn_hidden_size, num_heads=s.num_attention_heads,
        num_kv_heads=s.num_key_value_heads, vocab_size=s.vocab_size, dtype=torch.bfloat16,
    )


def dir_bytes(path: str, suffixes: tuple[str, ...]) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path) for f in files if f.endswith(suffixes)
    )


def run_convert(args: list[str]) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args, "--no-progress"], capture_output=True, text=True)
    seconds = time.time() - start
    line = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RSS ")]
    if proc.returncode or not line:
        sys.exit(f"conversion failed ({args}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = json.loads(line[0][len("BENCH_RSS "):])
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss["self_kb"] / 2**20, 2),
            "child_peak_rss_gb": round(rss["children_kb"] / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1.5B")
    p.add_argument("--format", default="torch_dist", choices=("torch_dist", "torch"))
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir, removed after)")
    p.add_argument("--hf-cache", default=os.path.join(os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "bench_hf"),
                   help="where the random HF checkpoint is kept between runs")
    args = p.parse_args()

    hf_dir = make_checkpoint(args.size, os.path.join(args.hf_cache, args.size.replace(".", "_")))
    ckpt_gb = dir_bytes(hf_dir, (".safetensors",)) / 2**30
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert_")
    mg_dir, back_dir = os.path.join(work, "mg"), os.path.join(work, "hf_back")
    for d in (mg_dir, back_dir):
        shutil.rmtree(d, ignore_errors=True)
    try:
        to_mg = run_convert(["--load-path", hf_dir, "--save-path", mg_dir, "--model-size", args.size,
                             "--precision", "bf16", "--ckpt-format", args.format])
        to_hf = run_convert(["--mg2hf", "--load-path", mg_dir, "--save-path", back_dir, "--model-size", args.size,
                             "--precision", "bf16", "--hf-ckpt-path", hf_dir])
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = {"HF->Megatron": to_mg, "Megatron->HF": to_hf}
    for r in rows.values():
        r["rss_over_ckpt"] = round(r["peak_rss_gb"] / ckpt_gb, 2)
        r["meets_targets"] = r["seconds"] < 30 and r["rss_over_ckpt"] < 1.5
    print(f"\nQwen2.5-{args.size} shape, bf16 checkpoint {ckpt_gb:.2f} GiB, format {args.format}, {os.cpu_count()} CPU cores")
    print(f"{'direction':<14}{'seconds':>9}{'peak RSS GiB':>14}{'x ckpt':>8}{'child RSS GiB':>15}{'targets':>9}")
    for name, r in rows.items():
        print(f"{name:<14}{r['seconds']:>9}{r['peak_rss_gb']:>14}{r['rss_over_ckpt']:>8}{r['child_peak_rss_gb']:>15}"
              f"{'ok' if r['meets_targets'] else 'MISSED':>9}")
    print(json.dumps({"size": args.size, "format": args.format, "checkpoint_gib": round(ckpt_gb, 2), "results": rows}))


if __name__ == "__main__":
    main()
