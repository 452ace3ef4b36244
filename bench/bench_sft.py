"""SFT throughput: OUR training entry point vs the HF transformers peer, same GPU, same tokens per step.

What runs (one command on any GPU box, nothing downloaded):
1. a real Qwen2.5 tokenizer built offline and the config.json of the chosen Qwen2.5 shape;
2. synthetic multi-turn conversations -> our preprocessing CLI -> packed idx/bin rows of SEQ_LEN;
3. ``torchrun -m megatron_autoalign.training.sft`` (random weights, bf16, distributed optimizer) for
   warm-up + measured steps; tokens/s, TFLOP/s, MFU and peak memory are read from its JSON log;
4. the HF peer (Qwen2ForCausalLM, SDPA, fp32 params + bf16 autocast, fused AdamW) at the same shape,
   sequence length and micro-batch (1 GPU), in a separate process.
Prints a table, then the JSON.

    python bench/bench_sft.py --model-size 1.5B --seq-length 8192 --gpus 1 --peer
    python bench/bench_sft.py --model-size 7B --gpus 4 --tp 2 --extra="--recompute-granularity selective"
    python bench/bench_sft.py --model-size 1.5B --gpus 1 --extra=--recompute-swiglu
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORDS = ("model data train token layer weight gradient batch sequence attention memory kernel the a of to "
         "and is in that for it with as on be at by this from or an are was which can will more about "
         "how what when why where please explain describe compute value result step order first next").split()


def write_conversations(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    with open(path, "w") as f:
        for _ in range(n):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns += [{"from": "human", "value": text(20, 120)}, {"from": "gpt", "value": text(80, 500)}]
            f.write(json.dumps({"conversations": turns}) + "\n")


def prepare(work: str, size: str, seq_len: int, rows: int) -> tuple[str, str]:
    from bench_model_step import hf_config_for

    from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer

    hf_dir = build_qwen2_tokenizer(os.path.join(work, "hf"))
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf_config_for(size), f)
    # One data set per (length, rows): every run trains on as many distinct rows as it steps through.
    prefix = os.path.join(work, "data", f"sft_{seq_len}_{rows}")
    if not os.path.exists(prefix + "_manifest.json"):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        conversations = prefix + "_conversations.jsonl"
        write_conversations(conversations, n=rows * seq_len // 900 + 50)
        subprocess.run([sys.executable, "-m", "megatron_autoalign.data.preprocess_sft", "--input", conversations,
                        "--output-prefix", prefix, "--hf-model-path", hf_dir, "--seq-len", str(seq_len),
                        "--template", "qwen", "--packing", "--no-progress"], check=True, cwd=ROOT)
    return hf_dir, prefix


def run_ours(args, hf_dir: str, prefix: str, log: str) -> dict:
    steps = args.warmup + args.steps
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.gpus}",
           "-m", "megatron_autoalign.training.sft", "--data-path", prefix, "--hf-config", hf_dir,
           "--tokenizer", hf_dir, "--bf16", "--use-distributed-optimizer",
           "--tensor-model-parallel-size", str(args.tp), "--pipeline-model-parallel-size", str(args.pp),
           "--micro-batch-size", str(args.micro_batch_size),
           "--global-batch-size", str(args.micro_batch_size * args.gpus // (args.tp * args.pp)),
           "--seq-length", str(args.seq_length), "--train-iters", str(steps), "--lr", "1e-5",
           "--log-interval", "1", "--log-json", log, "--seed", "1"] + shlex.split(args.extra)
    if args.tp > 1:
        cmd.append("--sequence-parallel")
    if os.path.exists(log):
        os.remove(log)
    subprocess.run(cmd, check=True, cwd=ROOT)
    records = [json.loads(line) for line in open(log) if '"tokens_per_s"' in line]
    measured = records[args.warmup:]
    tps = sum(r["tokens_per_s"] for r in measured) / len(measured)
    last = measured[-1]
    return {
        "system": f"ours_sft_entry_tp{args.tp}_pp{args.pp}_gpus{args.gpus}"
        + "".join(f"_{flag.lstrip('-')}" for flag in shlex.split(args.extra)) + (f"_{args.label}" if args.label else ""),
        "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / args.gpus,
        "tflops_per_gpu": sum(r.get("tflops_per_gpu", 0) for r in measured) / len(measured),
        "mfu": sum(r.get("mfu", 0) for r in measured) / len(measured),
        # MFU on the FLOPs actually computed (per-document attention, trained tokens projected): the honest one
        "mfu_actual": sum(r.get("mfu_actual", 0) for r in measured) / len(measured),
        "peak_memory_gb": max(r.get("peak_memory_gb", 0) for r in measured),
        "first_loss": records[0]["loss"], "last_loss": last["loss"],
        # per-step rates: a single slow step (a host hiccup) shows here without moving the median
        "step_tokens_per_s": [r["tokens_per_s"] for r in measured],
        "median_step_tokens_per_s": statistics.median(r["tokens_per_s"] for r in measured),
    }


def run_peer(args) -> dict:
    code = (
        "import json,sys; sys.path.insert(0, 'bench'); from hf_peer import run_hf_peer; "
        "from bench_model_step import hf_config_for; "
        f"print('PEER_JSON', json.dumps(run_hf_peer(hf_config_for('{args.model_size}'), {args.seq_length}, "
        f"{args.micro_batch_size}, {args.steps}, {args.warmup})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return json.loads(out.split("PEER_JSON", 1)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="1.5B")
    p.add_argument("--seq-length", type=int, default=8192)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peer", action="store_true", help="also run the HF peer on one GPU")
    p.add_argument("--extra", default="", help="extra training flags; write --extra=... when they start with a dash")
    p.add_argument("--label", default="", help="appended to our system name, e.g. to tell runs under different "
                                               "environment variables apart")
    p.add_argument("--work", default=os.path.join(ROOT, ".bench_out"))
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch

    work = os.path.join(args.work, f"{args.model_size}_{args.seq_length}")
    rows = (args.warmup + args.steps) * args.micro_batch_size * args.gpus + 8
    hf_dir, prefix = prepare(work, args.model_size, args.seq_length, rows)
    results = [run_ours(args, hf_dir, prefix, os.path.join(work, "train_log.jsonl"))]
    if args.peer:
        results.append(run_peer(args))
    gpu = torch.cuda.get_device_name()
    print(f"\n{args.model_size} seq {args.seq_length} micro-batch {args.micro_batch_size}, {args.gpus}x {gpu}")
    print(f"{'system':58s} {'tokens/s':>10s} {'tok/s/GPU':>10s} {'MFU':>6s} {'formula':>7s} {'peak GB':>8s}")
    for r in results:
        per_gpu = r.get("tokens_per_s_per_gpu", r["tokens_per_s"])
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        actual = f"{100 * r['mfu_actual']:.1f}%" if r.get("mfu_actual") else "-"
        print(f"{r['system']:58s} {r['tokens_per_s']:10.0f} {per_gpu:10.0f} {actual:>6s} {mfu:>7s} {r['peak_memory_gb']:8.1f}")
    print("MFU: on the FLOPs actually computed (models/flops.py); formula: full-row causal attention and every "
          "token projected")
    if args.peer:
        print(f"ratio ours/peer (tokens/s per GPU): {results[0]['tokens_per_s_per_gpu'] / results[1]['tokens_per_s']:.2f}x")
    out = json.dumps({"gpu": gpu, "args": vars(args), "results": results}, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
