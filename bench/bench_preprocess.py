"""Preprocessing throughput: the preprocessing CLI (a new process: start-up, file -> idx/bin + manifest)
vs a per-sample `tokenizer.apply_chat_template(tokenize=True)` loop over the same conversations, in one run.

    python bench/bench_preprocess.py --profile realistic [--conversations 400] [--workers 2]
    python bench/bench_preprocess.py --profile chat [--conversations 50000] [--baseline-limit 10000]

Profiles: `chat` and `long` are uniform synthetic chats; `realistic` is shaped like public ShareGPT dumps
(multi-turn up to 20 turns, replies of 2k-8k tokens, markdown and code blocks, CJK, emoji, some system
prompts, a third of the records starting with an assistant turn as in split dumps, a few ending with a
user turn). The CLI runs twice: "first run" with an empty tokenizer cache, then "cached" (the usual case).
The baseline only tokenizes (no labels, no trimming, no file reading/writing), so the ratio is conservative.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    "realistic": None,                    # make_realistic: ShareGPT-shaped, ~20k tokens per conversation
}
EMOJI = "🙂🚀✨👍🤗🔥💡📌✅❌👩‍💻🇫🇷"
CJK_WORDS = ("数据", "模型", "训练", "注意力", "梯度", "我们", "可以", "因为", "所以", "例如", "结果", "方法",
             "学习", "问题", "回答", "系统", "東京", "日本語", "勉強", "한국어", "데이터")
LANGS = ("python", "bash", "json", "cpp", "")


def _prose(rng, tokens):
    """About ``tokens`` tokens of markdown-ish prose: English, some CJK and emoji, lists, headers, code."""
    out, n = [], 0
    while n < tokens:
        r = rng.random()
        if r < 0.08:  # a fenced code block
            body = "\n".join(f"    {rng.choice(WORDS)}_{i} = {rng.choice(WORDS)}({i}, '{rng.choice(WORDS)}')"
                             for i in range(rng.randint(3, 30)))
            out.append(f"\n```{rng.choice(LANGS)}\n{CODE}{body}\n```\n")
            n += len(body) // 3 + 30
        elif r < 0.16:  # CJK sentence
            out.append("".join(rng.choice(CJK_WORDS) for _ in range(rng.randint(5, 30))) + "。")
            n += 25
        elif r < 0.24:  # list / header
            out.append(f"\n{rng.choice(['-', '*', '1.', '##'])} **{sentence(rng, (2, 6))}**\n")
            n += 10
        else:
            s = sentence(rng, (6, 24))
            if rng.random() < 0.1:
                s += " " + rng.choice(EMOJI)
            out.append(s)
            n += len(s) // 4 + 1
    return " ".join(out)


def make_realistic(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"from": "system", "value": _prose(rng, rng.randint(20, 200))}] if rng.random() < 0.05 else []
        exchanges = rng.randint(1, 10)  # up to 20 turns
        if rng.random() < 0.36:  # a chunk of a split dump: starts mid-dialogue with a reply
            msgs.append({"from": "gpt", "value": _prose(rng, rng.randint(2000, 8000))})
        for _ in range(exchanges):
            msgs += [{"from": "human", "value": _prose(rng, rng.randint(10, 400))},
                     {"from": "gpt", "value": _prose(rng, rng.randint(2000, 8000))}]
        if rng.random() < 0.02:
            msgs.append({"from": "human", "value": _prose(rng, 30)})
        out.append({"id": f"r{len(out)}", "conversations": msgs})
    return out


def make_data(n, profile="chat", seed=0):
    if profile == "realistic":
        return make_realistic(n, seed)
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


def run_cli(inp, out, tok_dir, seq_len, workers, cache_dir):
    """The preprocessing CLI in a new process; (wall seconds from process start to exit, manifest)."""
    env = dict(os.environ, MA_TOKENIZER_CACHE=cache_dir,
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "megatron_autoalign.data.preprocess_sft", "--input", inp, "--output-prefix", out,
           "--hf-model-path", tok_dir, "--seq-len", str(seq_len), "--workers", str(workers), "--truncation", "turn",
           "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"preprocessing failed:\n{r.stderr}")
    with open(out + "_manifest.json") as f:
        return seconds, json.load(f), r.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=None, help="default: 400 realistic, 50000 otherwise")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="realistic", help="message length profile")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seq-len", type=int, default=None, help="default: 32768 realistic, 4096 otherwise")
    ap.add_argument("--baseline-limit", type=int, default=10000, help="conversations timed for the baseline")
    ap.add_argument("--tokenizer-dir", default=os.path.join(
        os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache"), "tokenizer"))
    ap.add_argument("--json-out", help="also write the result JSON here")
    a = ap.parse_args()
    realistic = a.profile == "realistic"
    n = a.conversations or (400 if realistic else 50000)
    seq_len = a.seq_len or (32768 if realistic else 4096)

    tok_dir = a.tokenizer_dir
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        from megatron_autoalign.testing.tokenizer import build_qwen2_tokenizer
        tok_dir = build_qwen2_tokenizer(tok_dir)
    data = make_data(n, a.profile)
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "chats.json")
        with open(inp, "w") as f:
            json.dump(data, f, ensure_ascii=False)
        size_mb = os.path.getsize(inp) / 1e6

        # ours: the CLI, process start to manifest. First with an empty tokenizer cache (imports, tokenizer
        # load, fast-encoder build and verification), then with it, as every later run on that tokenizer.
        cache = os.path.join(tmp, "tokcache")
        runs = [run_cli(inp, os.path.join(tmp, f"out{k}", "sft"), tok_dir, seq_len, a.workers, cache) for k in range(2)]
        m = runs[1][1]
        report = runs[1][2]

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
    # The ratio compares times for the same corpus (the CLI writes fewer tokens than the loop tokenizes:
    # it trims split chunks and cuts over-long conversations at a turn), so it is not a tokens/s ratio.
    base_full_s = base_s * n / len(subset)
    cold, warm = (r[1]["num_tokens"] / r[0] for r in runs)
    res = {"conversations": n, "profile": a.profile, "input_mb": round(size_mb, 1),
           "workers": a.workers, "cpus": len(os.sched_getaffinity(0)), "encoder": m["encoder"], "packing": m["packing"],
           "seq_len": seq_len, "tokens": m["num_tokens"], "trained_tokens": m["num_trained_tokens"],
           "tokens_per_conversation": round(m["num_tokens"] / max(m["num_conversations"], 1)),
           "trimmed_records": m["trimmed"]["records"], "skipped": m["skipped"],
           "cli_first_run": {"seconds": round(runs[0][0], 2), "tokens_per_s": round(cold)},
           "cli_cached": {"seconds": round(runs[1][0], 2), "tokens_per_s": round(warm),
                          "in_run_seconds": m["seconds"]},
           "baseline_apply_chat_template": {"conversations": len(subset), "tokens": base_tokens,
                                            "seconds": round(base_s, 2), "tokens_per_s": round(base_tps),
                                            "seconds_for_all": round(base_full_s, 2)},
           "speedup_first_run": round(base_full_s / runs[0][0], 2), "speedup_cached": round(base_full_s / runs[1][0], 2),
           "fill_ratio": m["fill_ratio"]}
    print(report)
    print(f"\n{n} {a.profile} conversations, {size_mb:.1f} MB, {len(os.sched_getaffinity(0))} CPUs; speedup = loop "
          f"time for the whole corpus / CLI time")
    print(f"{'':<56}{'tokens':>12}{'seconds':>9}{'tokens/s':>12}{'speedup':>8}")
    for name, (t, mm, _), tps in ((f"CLI, first run: empty tokenizer cache ({a.workers} workers)", runs[0], cold),
                                  (f"CLI, cached tokenizer ({a.workers} workers, {m['encoder']})", runs[1], warm)):
        print(f"{name:<56}{mm['num_tokens']:>12,}{t:>9.2f}{tps:>12,.0f}{base_full_s / t:>7.2f}x")
    print(f"{'apply_chat_template(tokenize=True) loop, ' + str(len(subset)) + ' conversations':<56}"
          f"{base_tokens:>12,}{base_s:>9.2f}{base_tps:>12,.0f}{1:>7.2f}x")
    print(json.dumps(res))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
