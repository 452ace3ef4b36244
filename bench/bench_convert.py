"""Conversion benchmark on this machine: wall time and peak RSS, each conversion in its own process.

    python bench/bench_convert.py [--size 1.5B] [--format torch_dist] [--workdir DIR]
        random Qwen2.5-<size>-shaped HF checkpoint (bf16), HF -> Megatron -> HF.
        Targets (issue 3): under 30 s each way, peak RSS under 1.5x the checkpoint size.
    python bench/bench_convert.py --size 72B --layers 1,2,4 [--part-size 1GB]
        HF -> torch_dist only, for the size's width at several depths: peak RSS must stay flat in depth
        (issue 15: streaming), time grows linearly; the table gives per-layer cost for a projection.

Checkpoints are synthetic (random bf16 tensors written one at a time, no model instantiated) and cached
under --hf-cache. Reported RSS is the converting process's own peak (and of its largest child:
dist_checkpointing may start writer processes that share the parent's pages). Prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from megatron_autoalign.testing.measure import measure_convert


def make_checkpoint(size: str, out_dir: str, layers: int | None = None) -> str:
    import torch

    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES
    from megatron_autoalign.testing.tiny_models import write_synthetic_qwen2

    s = QWEN2_5_SIZES[size]
    return write_synthetic_qwen2(
        out_dir, layers or s.num_layers, s.hidden_size, s.ffn_hidden_size, s.num_attention_heads,
        s.num_key_value_heads, s.vocab_size, s.tie_word_embeddings, dtype=torch.bfloat16,
    )


def dir_bytes(path: str, suffixes: tuple[str, ...]) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path) for f in files if f.endswith(suffixes)
    )


def round_trip(args, work: str) -> None:
    hf_dir = make_checkpoint(args.size, os.path.join(args.hf_cache, args.size.replace(".", "_")))
    ckpt_gb = dir_bytes(hf_dir, (".safetensors",)) / 2**30
    mg_dir, back_dir = os.path.join(work, "mg"), os.path.join(work, "hf_back")
    to_mg = measure_convert(["--load-path", hf_dir, "--save-path", mg_dir, "--model-size", args.size,
                             "--precision", "bf16", "--ckpt-format", args.format, "--part-size", args.part_size])
    to_hf = measure_convert(["--mg2hf", "--load-path", mg_dir, "--save-path", back_dir, "--model-size", args.size,
                             "--precision", "bf16", "--hf-ckpt-path", hf_dir])
    rows = {"HF->Megatron": to_mg, "Megatron->HF": to_hf}
    for r in rows.values():
        r["rss_over_ckpt"] = round(r["peak_rss_gb"] / ckpt_gb, 2)
        r["meets_targets"] = r["seconds"] < 30 and r["rss_over_ckpt"] < 1.5
    print(f"\nQwen2.5-{args.size} shape, bf16 checkpoint {ckpt_gb:.2f} GiB, format {args.format}, "
          f"part size {args.part_size}, {os.cpu_count()} CPU cores")
    print(f"{'direction':<14}{'seconds':>9}{'peak RSS GiB':>14}{'x ckpt':>8}{'child RSS GiB':>15}{'targets':>9}")
    for name, r in rows.items():
        print(f"{name:<14}{r['seconds']:>9}{r['peak_rss_gb']:>14}{r['rss_over_ckpt']:>8}{r['child_peak_rss_gb']:>15}"
              f"{'ok' if r['meets_targets'] else 'MISSED':>9}")
    print(json.dumps({"size": args.size, "format": args.format, "part_size": args.part_size,
                      "checkpoint_gib": round(ckpt_gb, 2), "results": rows}))


def depth_sweep(args, work: str) -> None:
    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES

    depths = [int(x) for x in args.layers.split(",")]
    rows = []
    for layers in depths:
        full = layers == QWEN2_5_SIZES[args.size].num_layers  # the round trip's checkpoint, if cached
        name = args.size.replace(".", "_") + ("" if full else f"_{layers}l")
        hf_dir = make_checkpoint(args.size, os.path.join(args.hf_cache, name), layers)
        mg_dir = os.path.join(work, f"mg_{layers}")
        r = measure_convert(["--load-path", hf_dir, "--save-path", mg_dir, "--precision", "bf16",
                             "--part-size", args.part_size])
        r.update(layers=layers, checkpoint_gib=round(dir_bytes(hf_dir, (".safetensors",)) / 2**30, 2))
        rows.append(r)
        shutil.rmtree(mg_dir, ignore_errors=True)
    print(f"\nHF -> torch_dist, Qwen2.5-{args.size} width, bf16, part size {args.part_size}, {os.cpu_count()} CPU cores")
    print(f"{'layers':>7}{'ckpt GiB':>10}{'seconds':>9}{'peak RSS GiB':>14}{'child RSS GiB':>15}")
    for r in rows:
        print(f"{r['layers']:>7}{r['checkpoint_gib']:>10}{r['seconds']:>9}{r['peak_rss_gb']:>14}{r['child_peak_rss_gb']:>15}")
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        extra_layers = last["layers"] - first["layers"]
        print(f"per extra layer: {(last['seconds'] - first['seconds']) / extra_layers:.2f} s, "
              f"{(last['peak_rss_gb'] - first['peak_rss_gb']) / extra_layers * 1024:.0f} MiB of peak RSS "
              f"({(last['checkpoint_gib'] - first['checkpoint_gib']) / extra_layers * 1024:.0f} MiB of weights)")
    print(json.dumps({"size": args.size, "part_size": args.part_size, "rows": rows}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1.5B")
    p.add_argument("--layers", default=None, help="comma-separated depths: HF->torch_dist at the size's width only")
    p.add_argument("--format", default="torch_dist", choices=("torch_dist", "torch"))
    p.add_argument("--part-size", default="1GB", help="the converter's --part-size")
    p.add_argument("--workdir", default=None, help="scratch dir (default: a temp dir, removed after)")
    p.add_argument("--hf-cache", default=os.path.join(os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "bench_hf"),
                   help="where the random HF checkpoints are kept between runs")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_convert_")
    for d in ("mg", "hf_back"):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    try:
        depth_sweep(args, work) if args.layers else round_trip(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
