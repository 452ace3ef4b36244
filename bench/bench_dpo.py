"""DPO throughput: OUR DPO (online and precomputed reference) vs TRL's ``DPOTrainer``, same pairs, same GPU.

What runs (one command on any GPU box with trl installed, nothing downloaded):
1. a real Qwen2.5 tokenizer built offline and a random-weight HF model of the chosen Qwen2.5 shape (bf16
   safetensors), converted to a Megatron checkpoint (both systems start from the same weights);
2. synthetic preference pairs as chat records (a user prompt, two assistant replies; each side at most
   ``--seq-len`` tokens with the template) -> our DPO preprocessing, packed rows of 2 x ``--pack-seq-len``
   tokens (default: the same as --seq-len; a larger value packs more whole pairs into each row);
3. ours: ``python -m megatron_autoalign.dpo.train`` with ``--reference online`` (frozen reference model),
   then the reference scoring pass (``dpo.score_reference``, timed) and ``--reference precomputed``;
4. the peer: TRL's ``DPOTrainer`` on the SAME records (conversational format, the tokenizer's Qwen chat
   template), one pair per step (the chosen and rejected sequences padded to one length and run as one
   batch of two, as TRL does), fp32 parameters + bf16 autocast, SDPA, TRL's defaults otherwise (gradient
   checkpointing on, fused AdamW), with its own reference model and with ``precompute_ref_log_probs``.
Each system runs in its own process, warm-up steps first, then measured steps; ``--repeat N`` runs the list
N times over the same prepared data (``bench/summarize.py`` gives median, minimum and maximum).

tokens/s counts real tokens (prompt + reply of both sides, no padding). MFU is on the FLOPs each system
computes usefully (``models/flops.py``: causal attention per sequence, vocabulary projection of the
reply tokens, the reference forward as one more forward), the same count for both systems.

    python bench/bench_dpo.py --model-size 1.5B --seq-len 4096 --peer
    python bench/bench_dpo.py --model-size 1.5B --seq-len 4096 --pack-seq-len 8192 --peer --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_sft import WORDS  # noqa: E402

# A small shape for checking this script on a CPU (not a benchmark).
TINY = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "max_position_embeddings": 32768, "hidden_act": "silu"}


def config_for(size: str) -> dict:
    from bench_model_step import hf_config_for

    return dict(TINY) if size == "tiny" else hf_config_for(size)


def write_records(path: str, n: int, seq_len: int, seed: int = 0) -> None:
    """``n`` chat preference records; word counts keep each templated side under ``seq_len`` tokens
    (each word of WORDS is one token after a space)."""
    rng = random.Random(seed)
    budget = seq_len - 64  # template tokens

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    with open(path, "w") as f:
        for _ in range(n):
            prompt = rng.randint(budget // 16, budget // 4)
            chosen, rejected = (rng.randint(budget // 8, budget - prompt) for _ in range(2))
            f.write(json.dumps({"messages": [{"role": "user", "content": text(prompt)}],
                                "chosen": {"role": "assistant", "content": text(chosen)},
                                "rejected": {"role": "assistant", "content": text(rejected)}}) + "\n")


def prepare(args, work: str) -> dict:
    import torch

    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2
    from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer

    cfg = config_for(args.model_size)
    tok = build_qwen2_tokenizer(os.path.join(work, "tokenizer"))
    hf = os.path.join(work, "hf")
    cuda = torch.cuda.is_available()
    make_tiny_qwen2(hf, tied=cfg["tie_word_embeddings"], num_layers=cfg["num_hidden_layers"],
                    hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                    num_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_key_value_heads"],
                    vocab_size=cfg["vocab_size"], dtype=torch.bfloat16 if cuda else torch.float32, seed=0)
    for name in os.listdir(tok):  # one folder with the weights and the tokenizer, for both systems
        if not os.path.exists(os.path.join(hf, name)) and not name.startswith("."):
            os.symlink(os.path.join(tok, name), os.path.join(hf, name))
    mg = os.path.join(work, "mg")
    if not os.path.exists(os.path.join(mg, "latest_checkpointed_iteration.txt")):
        subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", hf,
                        "--save-path", mg, "--precision", "bf16" if cuda else "fp32", "--no-progress"],
                       check=True, cwd=ROOT)
    records = os.path.join(work, f"pairs_{args.seq_len}_{args.pairs}.jsonl")
    prefix = os.path.join(work, f"dpo_{args.seq_len}_{args.pack_seq_len}_{args.pairs}")
    if not os.path.exists(prefix + "_manifest.json"):
        if not os.path.exists(records):
            write_records(records, args.pairs, args.seq_len)
        subprocess.run([sys.executable, "-m", "megatron_autoalign.dpo.preprocess", "--input", records,
                        "--output-prefix", prefix, "--hf-model-path", hf, "--seq-len", str(args.pack_seq_len),
                        "--key", "messages", "--template", "qwen", "--packing", "--no-progress"], check=True, cwd=ROOT)
    return {"hf": hf, "mg": mg, "records": records, "prefix": prefix, "cfg": cfg, "cuda": cuda}


# ------------------------------------------------------------------------------------------------- ours

def run_ours(args, data: dict, reference: str, log: str) -> dict:
    steps = args.warmup + args.steps
    common = ["--data-path", data["prefix"], "--pretrained-checkpoint", data["mg"], "--hf-config", data["hf"],
              "--micro-batch-size", "1", "--global-batch-size", "1", "--seed", "1"]
    if data["cuda"]:
        common.append("--bf16")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m"]
    result = {}
    if reference == "precomputed":
        start = time.perf_counter()
        subprocess.run(torchrun + ["megatron_autoalign.dpo.score_reference", *common], check=True, cwd=ROOT)
        result["reference_scoring_s"] = time.perf_counter() - start  # includes start-up and the model load
    if os.path.exists(log):
        os.remove(log)
    subprocess.run(torchrun + ["megatron_autoalign.dpo.train", *common, "--use-distributed-optimizer",
                               "--reference", reference, "--train-iters", str(steps), "--lr", "1e-6",
                               "--log-interval", "1", "--log-json", log] + args.extra.split(), check=True, cwd=ROOT)
    records = [json.loads(line) for line in open(log) if '"tokens_per_s"' in line]
    measured = records[args.warmup:]
    return {
        "system": f"ours_dpo_{reference}_rows{2 * args.pack_seq_len}" + "".join(f"_{f.lstrip('-')}" for f in args.extra.split()),
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in measured),
        "median_step_tokens_per_s": statistics.median(r["tokens_per_s"] for r in measured),
        "mfu_actual": statistics.mean(r.get("mfu_actual", 0.0) for r in measured),
        "mfu": statistics.mean(r.get("mfu", 0.0) for r in measured),
        "peak_memory_gb": max(r.get("peak_memory_gb") or 0.0 for r in measured),
        "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"], **result,
    }


# ------------------------------------------------------------------------------------------------- TRL

def trl_record(record: dict) -> dict:
    """One of our chat preference records in TRL's conversational preference format. TRL renders
    prompt + reply with the tokenizer's chat template: the same tokens as our preprocessing
    (tests/unit/test_bench_dpo.py)."""
    return {"prompt": record["messages"], "chosen": [record["chosen"]], "rejected": [record["rejected"]]}


def run_trl(args, data: dict, precompute: bool, gradient_checkpointing: bool) -> dict:
    """TRL in a child process (its own CUDA context and memory), result as JSON on stdout."""
    spec = {"hf": data["hf"], "records": data["records"], "cfg": data["cfg"], "warmup": args.warmup,
            "steps": args.steps, "precompute": precompute, "gradient_checkpointing": gradient_checkpointing,
            "seq_len": args.seq_len}
    code = f"import json, sys; sys.path.insert(0, 'bench'); from bench_dpo import trl_worker; trl_worker({json.dumps(spec)!r})"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(out.stderr[-3000:])
    return json.loads(out.stdout.split("TRL_JSON", 1)[1])


def trl_worker(spec_json: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2ForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from megatron_autoalign.models.flops import computed_training_flops, peak_tflops

    spec = json.loads(spec_json)
    cuda = torch.cuda.is_available()
    rows = [trl_record(json.loads(line)) for line in open(spec["records"])]
    tok = AutoTokenizer.from_pretrained(spec["hf"])

    def load():
        return Qwen2ForCausalLM.from_pretrained(spec["hf"], dtype=torch.float32, attn_implementation="sdpa")

    total = spec["warmup"] + spec["steps"]
    config = DPOConfig(
        output_dir=os.path.join(os.path.dirname(spec["records"]), "trl_out"), per_device_train_batch_size=1,
        max_steps=total, max_length=None, beta=0.1, learning_rate=1e-6, bf16=cuda, save_strategy="no",
        report_to="none", gradient_checkpointing=spec["gradient_checkpointing"], use_cpu=not cuda,
        precompute_ref_log_probs=spec["precompute"], seed=1, dataloader_num_workers=0, logging_steps=10)

    batches = []  # per collated batch (= one step): real sequence lengths and trained targets, on the host

    class Clock(TrainerCallback):
        marks: dict = {}

        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (spec["warmup"], total):
                if cuda:
                    torch.cuda.synchronize()
                self.marks[state.global_step] = time.perf_counter()
                if state.global_step == spec["warmup"] and cuda:
                    torch.cuda.reset_peak_memory_stats()

    trainer = DPOTrainer(model=load(), ref_model=None if spec["precompute"] else load(), args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()])
    collate = trainer.data_collator

    def counting_collator(examples):
        out = collate(examples)
        lengths = out["attention_mask"].sum(1).tolist()
        trained = int(out["completion_mask"][:, 1:].sum())
        batches.append((lengths, trained))
        return out

    trainer.data_collator = counting_collator
    trainer.train()
    clock = Clock.marks
    seconds = clock[total] - clock[spec["warmup"]]
    measured = batches[spec["warmup"]:total]
    tokens = sum(sum(lengths) for lengths, _ in measured)
    flops = sum(computed_training_flops(spec["cfg"], lengths, trained) for lengths, trained in measured)
    flops *= 1.0 if spec["precompute"] else 4 / 3  # + the reference forward
    peak = peak_tflops(torch.cuda.get_device_name()) if cuda else None
    result = {
        "system": "trl_dpotrainer" + ("_precomputed" if spec["precompute"] else "_online")
        + ("" if spec["gradient_checkpointing"] else "_no-gradient-checkpointing"),
        "tokens_per_s": tokens / seconds,
        "mfu_actual": flops / seconds / 1e12 / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0,
        "tokens_per_step": tokens / len(measured),
    }
    print("TRL_JSON" + json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="1.5B", help="a Qwen2.5 size, or 'tiny' to check the script on a CPU")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (chosen or rejected), at most")
    p.add_argument("--pack-seq-len", type=int, default=None,
                   help="our preprocessing's --seq-len: rows of 2x this many tokens (default: --seq-len)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="run the list of systems this many times")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peer", action="store_true", help="also run TRL's DPOTrainer (needs trl)")
    p.add_argument("--systems", default="online,trl_online,precomputed,trl_precomputed",
                   help="comma-separated: online, precomputed, trl_online, trl_precomputed, trl_online_no_gc")
    p.add_argument("--extra", default="", help="extra flags for our training runs")
    p.add_argument("--work", default=os.path.join(ROOT, ".bench_out"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.pack_seq_len = args.pack_seq_len or args.seq_len

    work = os.path.join(args.work, f"dpo_{args.model_size}")
    os.makedirs(work, exist_ok=True)
    data = prepare(args, work)
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    systems = args.systems.split(",")
    if not args.peer:
        systems = [s for s in systems if not s.startswith("trl")]
    results = []
    for s in systems * args.repeat:
        if s in ("online", "precomputed"):
            results.append(run_ours(args, data, s, os.path.join(work, f"train_{s}.jsonl")))
        elif s.startswith("trl_"):
            results.append(run_trl(args, data, precompute=s == "trl_precomputed",
                                   gradient_checkpointing=not s.endswith("no_gc")))
        else:
            raise SystemExit(f"unknown system {s}")
        r = results[-1]  # printed and saved as it comes: a run cut short by a time limit keeps the finished ones
        print(f"RESULT {r['system']} tokens/s {r['tokens_per_s']:.0f} MFU {r.get('mfu_actual') or 0:.3f}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"gpu": gpu, "args": vars(args), "results": results}, f, indent=1)
    out = json.dumps({"gpu": gpu, "args": vars(args), "results": results}, indent=1)
    print(f"\nDPO {args.model_size}, pairs of up to 2x{args.seq_len} tokens (ours: rows of {2 * args.pack_seq_len}), 1x {gpu}")
    print(f"{'system':52s} {'tokens/s':>10s} {'MFU':>6s} {'peak GB':>8s}")
    for r in results:
        mfu = f"{100 * r['mfu_actual']:.1f}%" if r.get("mfu_actual") else "-"
        print(f"{r['system']:52s} {r['tokens_per_s']:10.0f} {mfu:>6s} {r['peak_memory_gb']:8.1f}")
    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r["system"], []).append(r["tokens_per_s"])
    pairs = [(o, p) for o in by for p in by if o.startswith("ours_dpo_") and p.startswith("trl_dpotrainer_")
             and o.split("_")[2] == p.split("_")[2]]  # same reference mode: online / precomputed
    for ours, peer in pairs:
        print(f"ratio {ours} / {peer} (medians of {len(by[ours])} and {len(by[peer])} runs): "
              f"{statistics.median(by[ours]) / statistics.median(by[peer]):.2f}x")
    print("MFU: on the FLOPs computed usefully (models/flops.py), the same count for both systems")
    print(out)


if __name__ == "__main__":
    main()
