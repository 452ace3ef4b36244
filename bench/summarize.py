"""One table over every ``bench_sft.py``, ``bench_model_step.py`` and ``bench_dpo.py`` JSON file of a results
folder (``run_gpu_suite.sh`` writes them).

Rows of the same system and shape (repeats of one configuration) are grouped: the table gives their count,
median, minimum and maximum tokens/s per GPU. Two derived columns, each only against rows of the same folder
and the same model size and sequence length:
- ratio to the peer (median peer tokens/s): the HF peer for SFT and the component step, TRL's DPOTrainer with
  the same reference mode for DPO;
- for pure data parallelism (TP1, PP1, several GPUs): per-GPU efficiency against the median 1-GPU run with
  the same extra flags, or without extra flags where the folder has no such run (the JSON names the base).
Other JSON files are skipped and counted.
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


def _is_peer(system: str) -> bool:
    return system.startswith(PEER_PREFIX) or system.startswith("trl_")


def _shape(a: dict) -> str | None:
    """The shape a result file measured, by which bench wrote it (None: not a bench result)."""
    if "pairs" in a:  # bench_dpo
        return f"DPO {a['model_size']} 2x{a['seq_len']}"
    if "packed_docs" in a:  # bench_model_step (one process per GPU)
        return f"{a['model_size']} seq {a['seq_length']} mb {a['micro_batch_size']} step"
    if "gpus" in a:  # bench_sft
        return f"{a['model_size']} seq {a['seq_length']} mb {a['micro_batch_size']}"
    return None


def load_rows(folder: str) -> tuple[list[dict], list[str]]:
    """(rows of every bench_sft result, names of the JSON files skipped as not bench_sft output)."""
    rows, skipped = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError:
                doc = None
        shape = _shape(doc.get("args", {})) if isinstance(doc, dict) and "results" in doc else None
        if shape is None:
            skipped.append(os.path.basename(path))
            continue
        for r in doc["results"]:
            a = doc["args"]
            peer = _is_peer(r["system"])
            rows.append({**r, "gpus": 1 if peer else a.get("gpus", 1), "extra": a.get("extra", ""), "shape": shape,
                         "data_parallel_only": peer or (a.get("tp", 1) == 1 and a.get("pp", 1) == 1)})
    return rows, skipped


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["system"]), []).append(r)
    peer, single = {}, {}  # (shape, peer) -> median peer tokens/s; (shape, extra) -> median 1-GPU tokens/s of ours
    for (shape, name), rs in groups.items():
        median = statistics.median(r["tokens_per_s"] for r in rs)
        if _is_peer(name):
            peer[(shape, PEER_PREFIX if name.startswith(PEER_PREFIX) else name)] = median
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
        # DPO: ours_dpo_<reference mode>_... against trl_dpotrainer_<same mode>
        peer_key = (shape, f"trl_dpotrainer_{name.split('_')[2]}" if name.startswith("ours_dpo_") else PEER_PREFIX)
        if peer_key in peer and not _is_peer(name):
            row["ratio_to_peer"] = med / peer[peer_key]
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
        raise SystemExit(f"{folder}: no bench JSON results")
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
