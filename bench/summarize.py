"""One table over every ``bench_sft.py --json`` file of a results folder (``run_gpu_suite.sh`` writes them).

Rows of the same system and shape (repeats of one configuration) are grouped: the table gives their count,
median, minimum and maximum tokens/s per GPU. Two derived columns, each only against rows of the same folder
and the same model size and sequence length:
- ratio to the HF peer (median peer tokens/s);
- for pure data parallelism (TP1, PP1, several GPUs): per-GPU efficiency against the median 1-GPU run with
  the same extra flags, or without extra flags where the folder has no such run (the JSON names the base).
Files that are not bench_sft output (the component bench writes JSON too) are skipped and counted.
Point it at one call's folder: runs from different machines differ by more than the effects measured.
Prints the table, then the JSON.

    python bench/summarize.py gpu_out
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys

PEER_PREFIX = "hf_transformers"


def load_rows(folder: str) -> tuple[list[dict], list[str]]:
    """(rows of every bench_sft result, names of the JSON files skipped as not bench_sft output)."""
    rows, skipped = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError:
                doc = None
        if not isinstance(doc, dict) or "results" not in doc or "gpus" not in doc.get("args", {}):
            skipped.append(os.path.basename(path))
            continue
        for r in doc["results"]:
            a = doc["args"]
            peer = r["system"].startswith(PEER_PREFIX)
            rows.append({**r, "gpus": 1 if peer else a["gpus"], "extra": a.get("extra", ""),
                         "shape": f"{a['model_size']} seq {a['seq_length']} mb {a['micro_batch_size']}",
                         "data_parallel_only": peer or (a["tp"] == 1 and a["pp"] == 1)})
    return rows, skipped


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["system"]), []).append(r)
    peer, single = {}, {}  # shape -> median peer tokens/s; (shape, extra) -> median 1-GPU tokens/s of ours
    for (shape, name), rs in groups.items():
        median = statistics.median(r["tokens_per_s"] for r in rs)
        if name.startswith(PEER_PREFIX):
            peer[shape] = median
        elif rs[0]["gpus"] == 1:
            single[(shape, rs[0]["extra"])] = median
    table = []
    for (shape, name), rs in groups.items():
        per_gpu = [r["tokens_per_s"] / r["gpus"] for r in rs]
        med = statistics.median(per_gpu)
        row = {"shape": shape, "system": name, "gpus": rs[0]["gpus"], "runs": len(rs),
               "tokens_per_s_per_gpu_median": med, "min": min(per_gpu), "max": max(per_gpu),
               "peak_memory_gb": max(r["peak_memory_gb"] for r in rs),
               "mfu_median": statistics.median(r.get("mfu") or 0.0 for r in rs),
               # MFU on the FLOPs actually computed (models/flops.py); older JSON files have only "mfu"
               "mfu_actual_median": statistics.median(r.get("mfu_actual") or 0.0 for r in rs)}
        if shape in peer and not name.startswith(PEER_PREFIX):
            row["ratio_to_peer"] = med / peer[shape]
        base_extra = rs[0]["extra"] if (shape, rs[0]["extra"]) in single else ""
        if (shape, base_extra) in single and rs[0]["gpus"] > 1 and rs[0]["data_parallel_only"]:
            row["per_gpu_efficiency"] = med / single[(shape, base_extra)]
            row["efficiency_base_extra"] = base_extra
        table.append(row)
    return table


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "gpu_out"
    rows, skipped = load_rows(folder)
    if skipped:
        print(f"skipped {len(skipped)} JSON file(s) that are not bench_sft output: {', '.join(skipped)}")
    table = summarize(rows)
    if not table:
        raise SystemExit(f"{folder}: no bench_sft JSON results")
    print(f"{'shape':22s} {'system':62s} {'GPUs':>4s} {'runs':>4s} {'tok/s/GPU':>10s} {'min':>8s} {'max':>8s} "
          f"{'MFU':>6s} {'formula':>7s} {'peak GB':>7s} {'vs peer':>7s} {'scaling':>7s}")
    for r in table:
        ratio = f"{r['ratio_to_peer']:.2f}x" if "ratio_to_peer" in r else "-"
        eff = f"{100 * r['per_gpu_efficiency']:.1f}%" if "per_gpu_efficiency" in r else "-"
        print(f"{r['shape']:22s} {r['system']:62s} {r['gpus']:4d} {r['runs']:4d} {r['tokens_per_s_per_gpu_median']:10.0f} "
              f"{r['min']:8.0f} {r['max']:8.0f} {100 * r['mfu_actual_median']:5.1f}% {100 * r['mfu_median']:6.1f}% "
              f"{r['peak_memory_gb']:7.1f} "
              f"{ratio:>7s} {eff:>7s}")
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
