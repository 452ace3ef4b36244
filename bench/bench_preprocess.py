"""Preprocessing throughput: our pipeline (file -> idx/bin, workers + tiktoken) vs a per-sample
`tokenizer.apply_chat_template(tokenize=True)` loop, in the same run, on synthetic multi-turn chats.

    python bench/bench_preprocess.py [--conversations 50000] [--workers 2] [--baseline-limit 10000]

The baseline only tokenizes (no labels, no file reading/writing), so the ratio is conservative.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

WORDS = ("the model learns to answer questions about data training tokens layers attention memory gradient "
         "simple small large fast slow river mountain city history science music water light energy number "
         "because however therefore example result method system value function").split()
CODE = "def f(x):\n    return [i * 2 for i in range(x) if i % 3]\n\nprint(f(10))  # done\n"
CJK = "机器学习模型需要大量的数据来训练。今天天气很好，我们去公园散步吧！"


def sentence(rng, words=(6, 24)):
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
    return s[0].upper() + s[1:] + rng.choice([".", "?", "!", ","])


def text(rng, lo, hi, words=(6, 24)):
    parts = [sentence(rng, words) for _ in range(rng.randint(lo, hi))]
    r = rng.random()
    if r < 0.1:
        parts.append("\n```python\n" + CODE + "```")
    elif r < 0.2:
        parts.append(CJK)
    return " ".join(parts)


PROFILES = {  # (user sentences, reply sentences, words per sentence)
    "chat": ((1, 1), (1, 3), (4, 12)),    # short chat turns, ~130 tokens per conversation
    "long": ((1, 4), (2, 8), (6, 24)),    # long answers, ~380 tokens per conversation
}


def make_data(n, profile="chat", seed=0):
    rng = random.Random(seed)
    user, reply, words = PROFILES[profile]
    out = []
    for i in range(n):
        msgs = [{"from": "system", "value": text(rng, 1, 1, words)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 4)):
            msgs += [{"from": "human", "value": text(rng, *user, words)},
                     {"from": "gpt", "value": text(rng, *reply, words)}]
        out.append({"conversations": msgs})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=50000)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="chat", help="message length profile")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--baseline-limit", type=int, default=10000, help="conversations timed for the baseline")
    ap.add_argument("--tokenizer-dir", default=os.path.join(
        os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "tokenizer"))
    a = ap.parse_args()

    from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer
    tok_dir = build_qwen2_tokenizer(a.tokenizer_dir)
    data = make_data(a.conversations, a.profile)
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "chats.json")
        with open(inp, "w") as f:
            json.dump(data, f)
        size_mb = os.path.getsize(inp) / 1e6

        # ours: the preprocessing entry point, file -> idx/bin + manifest. The first call is cold (imports,
        # tokenizer load, fast-encoder build and verification); the second shows the steady state that
        # dominates on real, larger datasets.
        from megatron_autoalign.data.preprocess_sft import main as preprocess
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            rc = preprocess(["--input", inp, "--output-prefix", os.path.join(tmp, "out", "sft"),
                             "--hf-model-path", tok_dir, "--seq-len", str(a.seq_len), "--workers", str(a.workers),
                             "--no-progress"])
            times.append(time.perf_counter() - t0)
            assert rc == 0
        with open(os.path.join(tmp, "out", "sft_manifest.json")) as f:
            m = json.load(f)

        # baseline: per-sample apply_chat_template(tokenize=True) on the first N conversations
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir)
        subset = data[: a.baseline_limit]
        t0 = time.perf_counter()
        base_tokens = 0
        for rec in subset:
            msgs = [{"role": role[t["from"]], "content": t["value"]} for t in rec["conversations"]]
            out = tok.apply_chat_template(msgs, tokenize=True)
            base_tokens += len(out["input_ids"] if hasattr(out, "keys") else out)
        base_s = time.perf_counter() - t0

    base_tps = base_tokens / base_s
    cold, warm = (m["num_tokens"] / t for t in times)
    res = {"conversations": a.conversations, "profile": a.profile, "input_mb": round(size_mb, 1),
           "workers": a.workers, "cpus": os.cpu_count(), "encoder": m["encoder"], "packing": m["packing"],
           "seq_len": a.seq_len, "tokens": m["num_tokens"], "tokens_per_conversation": round(m["num_tokens"] / a.conversations),
           "ours_cold": {"seconds": round(times[0], 2), "tokens_per_s": round(cold)},
           "ours_warm": {"seconds": round(times[1], 2), "tokens_per_s": round(warm)},
           "baseline_apply_chat_template": {"conversations": len(subset), "tokens": base_tokens,
                                            "seconds": round(base_s, 2), "tokens_per_s": round(base_tps)},
           "ratio_cold": round(cold / base_tps, 2), "ratio_warm": round(warm / base_tps, 2),
           "fill_ratio": m["fill_ratio"]}
    print(f"\n{'pipeline (' + a.profile + ' profile)':<52}{'tokens':>11}{'seconds':>9}{'tokens/s':>12}{'ratio':>7}")
    for name, t, tps in ((f"ours, cold start ({a.workers} workers, {m['encoder']})", times[0], cold),
                         (f"ours, warm ({a.workers} workers, {m['encoder']})", times[1], warm)):
        print(f"{name:<52}{m['num_tokens']:>11}{t:>9.2f}{tps:>12,.0f}{tps / base_tps:>6.2f}x")
    print(f"{'apply_chat_template(tokenize=True) per sample':<52}{base_tokens:>11}{base_s:>9.2f}{base_tps:>12,.0f}"
          f"{1:>6.2f}x")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
