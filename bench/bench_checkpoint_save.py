"""How long a training checkpoint takes: one torch_dist save and one resume (load) of a Qwen2.5-shaped model
with random weights and full Adam state, through the training loop's own ``save_checkpoint`` /
``load_checkpoint``. This is the time a preempted run needs after its signal (README, "Stopping, resuming,
preemption"): the current step, then this save.

    torchrun --nproc_per_node 1 bench/bench_checkpoint_save.py --model-size 1.5B
    torchrun --nproc_per_node 2 bench/bench_checkpoint_save.py --model-size 7B

Sizes on disk with Adam: 14 bytes per parameter (1.5B: 21.6 GB; 7B: 107 GB, more than one H200's 139 GB of
GPU memory holds with gradients, and more than a 64 GiB disk holds: use 2 GPUs and a larger disk).
Measured 2026-12-01, one H200, Qwen2.5-1.5B, local ext4 disk: save 39.7 s the first time in a process
(megatron starts its writer processes), 18.2 s after; load 17.3 s; weights only: save 11.4 s, load 2.5 s.

Each rank holds the model (TP shards) and its distributed-optimizer shard; the save writes bf16 weights plus
fp32 main weights and both Adam moments. Prints a table and a JSON line (``--json`` writes it to a file too).
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
import types

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()


def _timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-size", default="1.5B", help="a Qwen2.5 size name (0.5B..72B)")
    p.add_argument("--hf-config", default=None, help="a config.json (or its folder) instead of --model-size")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--save-dir", default=None, help="where to write (default: a temporary folder, removed after)")
    p.add_argument("--repeats", type=int, default=2, help="save+load rounds (the first starts megatron's writer processes)")
    p.add_argument("--no-optim", action="store_true", help="weights only (--no-save-optim)")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from bench_model_step import hf_config_for, training_args

    from megatron_autoalign.models import load_hf_config
    from megatron_autoalign.runtime import destroy_distributed, device, init_distributed
    from megatron_autoalign.training.checkpointing import _ensure_adam_state, load_checkpoint, save_checkpoint
    from megatron_autoalign.training.model_and_optimizer import (
        build_model, build_optimizer, build_scheduler, build_transformer_config, wrap_ddp,
    )

    hf_config = load_hf_config(args.hf_config) if args.hf_config else hf_config_for(args.model_size)
    init_distributed(args.tp, 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    shape = types.SimpleNamespace(tp=args.tp, micro_batch_size=1, seq_length=4096, recompute_swiglu=False,
                                  no_grad_accum_fusion=False)
    targs = training_args(shape, world).replace(  # what the data would give a real run
        training={"train_iters": 1000}, optimizer={"lr_decay_iters": 1000},
        checkpoint={"no_load_optim": args.no_optim, "no_save_optim": args.no_optim})
    tconfig = build_transformer_config(targs, hf_config)
    model = wrap_ddp(targs, tconfig, build_model(targs, hf_config, tconfig))
    optimizer = build_optimizer(targs, model)
    scheduler = build_scheduler(targs, optimizer)
    _ensure_adam_state(optimizer)  # the Adam moments a trained checkpoint carries
    # TP shards on this rank, summed over ranks; every DP replica holds the whole model
    params = torch.tensor([float(sum(p.numel() for c in model for p in c.parameters()))], device=device())
    dist.all_reduce(params)
    params = int(params.item()) // (world // args.tp)

    base = args.save_dir or (tempfile.mkdtemp(prefix="bench_ckpt_") if rank == 0 else None)
    shared = [base]
    dist.broadcast_object_list(shared, src=0)
    save_dir = shared[0]
    rows = []
    for r in range(args.repeats):
        it = r + 1
        save_s = _timed(lambda: save_checkpoint(save_dir, it, model, optimizer, scheduler,
                                                {"consumed_samples": 0, "skipped_steps": 0}, targs,
                                                with_optim=not args.no_optim))
        size = _disk_bytes(os.path.join(save_dir, f"iter_{it:07d}")) if rank == 0 else 0
        load_s = _timed(lambda: load_checkpoint(save_dir, model, optimizer, scheduler, targs.checkpoint))
        if rank == 0 and it > 1:  # one checkpoint on disk at a time (1.5B + Adam is 21.6 GB)
            shutil.rmtree(os.path.join(save_dir, f"iter_{it - 1:07d}"), ignore_errors=True)
        rows.append({"round": it, "save_s": save_s, "load_s": load_s, "bytes": size,
                     "save_gb_per_s": size / 1e9 / save_s, "load_gb_per_s": size / 1e9 / load_s})
    if rank == 0:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        shape_name = args.hf_config or f"Qwen2.5-{args.model_size}"
        fs = subprocess.run(["df", "-hT", save_dir], capture_output=True, text=True).stdout.strip().splitlines()[-1:]
        print(f"\n{shape_name}: {params / 1e9:.2f}B parameters, {world} x {gpu}, TP {args.tp}, "
              f"{'weights only' if args.no_optim else 'weights + fp32 main weights + Adam'}; {save_dir} ({' '.join(fs)})")
        print(f"{'round':>5} {'save s':>8} {'load s':>8} {'GB':>8} {'save GB/s':>10} {'load GB/s':>10}")
        for row in rows:
            print(f"{row['round']:>5} {row['save_s']:8.2f} {row['load_s']:8.2f} {row['bytes'] / 1e9:8.2f} "
                  f"{row['save_gb_per_s']:10.2f} {row['load_gb_per_s']:10.2f}")
        out = json.dumps({"bench": "checkpoint_save", "model": shape_name, "parameters": params, "world_size": world,
                          "tp": args.tp, "device": gpu, "with_optim": not args.no_optim, "save_dir": save_dir,
                          "filesystem": fs, "results": rows})
        print(out)
        if args.json:
            with open(args.json, "w") as f:
                f.write(out + "\n")
        if not args.save_dir:
            shutil.rmtree(save_dir, ignore_errors=True)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
