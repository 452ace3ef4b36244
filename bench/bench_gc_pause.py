"""How long one full garbage collection takes once the training loop is set up, with the set-up objects
tracked (the default) and after ``gc.freeze()`` (what ``Trainer.train`` does before step 1).

The training step is limited by the host on GPUs, so a full collection during a step stalls it. Runs on
any machine (CPU is enough: this measures Python, not kernels), on a tiny Qwen2 of N layers and random
packed data, built in a temporary folder. Prints a table, then the JSON.

    python bench/bench_gc_pause.py --layers 28
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time


def full_collection_ms(repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2
    from megatron_autoalign.training.loop import Trainer
    from megatron_autoalign.training.sft_task import SFTTask
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    with tempfile.TemporaryDirectory() as tmp:
        hf = make_tiny_qwen2(os.path.join(tmp, "hf"), num_layers=args.layers, vocab_size=1024)
        data = os.path.join(tmp, "data")
        write_synthetic_sft(data, 16, 256, packed=True, vocab=1000, max_docs=4, min_doc=16)
        Trainer(SFTTask, ["--data-path", data, "--hf-config", hf, "--seq-length", "256", "--train-iters", "1",
                          "--micro-batch-size", "1", "--global-batch-size", "1", "--lr", "1e-4",
                          "--use-distributed-optimizer"])
        tracked = len(gc.get_objects())
        unfrozen = full_collection_ms()
        gc.freeze()
        frozen = full_collection_ms()
        gc.unfreeze()
    result = {"layers": args.layers, "tracked_objects": tracked, "full_collection_ms": unfrozen,
              "full_collection_ms_after_freeze": frozen}
    print(f"tiny Qwen2, {args.layers} layers, after Trainer set-up: {tracked} tracked objects")
    print(f"{'full gc.collect()':28s} {unfrozen:8.1f} ms")
    print(f"{'after gc.freeze()':28s} {frozen:8.1f} ms")
    out = json.dumps(result, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
