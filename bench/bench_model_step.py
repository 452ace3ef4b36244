"""Component benchmark: one full fine-tuning step of our megatron-core Qwen2 model vs the HF peer.

No data pipeline, no checkpointing: model + DDP + megatron optimizer + forward/backward schedule on random
tokens, to see where the step time goes (``--profile`` prints a kernel-time breakdown). The end-to-end
throughput number for users comes from ``bench/bench_sft.py``, which runs the real entry point.

    torchrun --nproc_per_node 1 bench/bench_model_step.py --model-size 1.5B --seq-length 8192 --peer
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def hf_config_for(size_name: str) -> dict:
    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES

    s = QWEN2_5_SIZES[size_name]
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": s.num_layers,
        "hidden_size": s.hidden_size, "intermediate_size": s.ffn_hidden_size,
        "num_attention_heads": s.num_attention_heads, "num_key_value_heads": s.num_key_value_heads,
        "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_word_embeddings, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 32768, "hidden_act": "silu",
    }


def training_args(args, world: int):
    """The entry point's run config for this bench's shape, so that the model, DDP, optimizer and
    optimizer step below are built by the same functions as in ``python -m megatron_autoalign.training.sft``."""
    from megatron_autoalign.training.config import parse_run_config

    argv = ["--data-path", "unused", "--hf-config", "unused", "--use-distributed-optimizer", "--lr", "1e-5",
            "--tensor-model-parallel-size", str(args.tp), "--micro-batch-size", str(args.micro_batch_size),
            "--seq-length", str(args.seq_length)]
    if torch.cuda.is_available():
        argv.append("--bf16")
    if args.tp > 1:
        argv.append("--sequence-parallel")
    if args.recompute_swiglu:
        argv.append("--recompute-swiglu")
    if args.no_grad_accum_fusion:
        argv.append("--no-gradient-accumulation-fusion")
    return parse_run_config(argv, world)  # no virtual pipeline: for_model would leave its size None


def run_ours(args, hf_config: dict) -> dict:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_autoalign.models import attention, build_model_chunks, resolve_transformer_impl
    from megatron_autoalign.models.attention import PackedDocuments
    from megatron_autoalign.models.flops import computed_training_flops, peak_tflops, training_flops_per_token
    from megatron_autoalign.runtime import device, init_distributed
    from megatron_autoalign.runtime.transfer import to_device_async
    from megatron_autoalign.training.model_and_optimizer import (
        build_optimizer, build_transformer_config, optimizer_step, wire_schedule_hooks, wrap_ddp,
    )

    cuda = torch.cuda.is_available()
    init_distributed(args.tp, 1)
    world = torch.distributed.get_world_size()
    targs = training_args(args, world)
    attention.PACKED_KERNEL = args.packed_kernel
    tconfig = build_transformer_config(targs, hf_config)
    for field in args.disable:
        setattr(tconfig, field, False)
    if args.recompute_modules:
        tconfig.recompute_granularity = "selective"
        tconfig.recompute_modules = args.recompute_modules
    dev = device()
    chunks = [c.to(dev) for c in build_model_chunks(
        hf_config, tconfig, resolve_transformer_impl(targs.model.transformer_impl),
        recompute_activation=targs.model.recompute_swiglu, fused_linear_cross_entropy=not args.unfused_loss)]
    ddp = wrap_ddp(targs, tconfig, chunks)
    optimizer = build_optimizer(targs, ddp)
    wire_schedule_hooks(targs, tconfig, ddp, optimizer)

    seq, mbs = args.seq_length, args.micro_batch_size
    vocab = min(151643, hf_config["vocab_size"])
    tokens = torch.randint(0, vocab, (mbs, seq + 1), device=dev)
    positions = torch.arange(seq, device=dev).expand(mbs, seq)
    bounds = tuple(torch.linspace(0, seq * mbs, args.packed_docs * mbs + 1).long().tolist())
    step_outputs = []  # per step: the schedule's per-micro-batch metrics (last pipeline stage)

    def forward_step(_, m):
        inp, lab, pos = tokens[:, :-1], tokens[:, 1:], positions
        packed = None
        if args.packed_docs > 1:
            # Same boundaries every step, so the attention builds its document layout once; training
            # batches with other boundaries rebuild it once per micro-batch (the entry-point bench has that).
            # (copied like training copies its batches: a plain .to(cuda) would wait for the last update)
            cu = to_device_async(torch.tensor(bounds, dtype=torch.int32), dev)
            packed = PackedDocuments(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=seq,
                                     max_seqlen_kv=seq, boundaries=bounds)
            inp, lab, pos = inp.reshape(1, -1), lab.reshape(1, -1), pos.reshape(1, -1)
        out = m(inp, pos, None, labels=lab, packed_seq_params=packed)

        def loss_func(per_token):  # the training loop's per-token contract: (sum, count, metrics)
            loss_sum, count = per_token.float().sum(), torch.tensor(per_token.numel(), device=dev, dtype=torch.int)
            return loss_sum, count, {"loss": torch.stack([loss_sum.detach(), count.detach().float()])}

        return out, loss_func

    def step():
        for m in ddp:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        outputs = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=None, model=ddp,
                                              num_microbatches=1, seq_length=seq, micro_batch_size=mbs,
                                              forward_only=False)
        optimizer_step(optimizer, targs.optimizer.clip_grad)
        step_outputs.append(outputs)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    static_gb = torch.cuda.memory_allocated() / 1e9 if cuda else 0.0  # params, grads, optimizer state
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    tokens_per_s = args.steps * mbs * seq * (world // args.tp) / elapsed
    tflops = tokens_per_s * training_flops_per_token(hf_config, seq) / 1e12 / world
    # the FLOPs actually computed: attention within each of the row's documents (every token has a target)
    docs = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    tflops_actual = tflops * computed_training_flops(hf_config, docs, sum(docs)) / (
        sum(docs) * training_flops_per_token(hf_config, seq))
    peak = peak_tflops(torch.cuda.get_device_name()) if cuda else None
    last = step_outputs[-1][0]["loss"] if step_outputs[-1] else None
    result = {
        "system": f"ours_local_spec_tp{args.tp}" + (f"_packed{args.packed_docs}" if args.packed_docs > 1 else "")
        + ("_unfusedloss" if args.unfused_loss else "")
        + ("_no-wgrad-fusion" if args.no_grad_accum_fusion else "")
        + (f"_{args.packed_kernel}" if args.packed_kernel != "auto" else "") + ("_recompute-swiglu" if args.recompute_swiglu else "")
        + "".join(f"_no-{f}" for f in args.disable)
        + "".join(f"_recompute-{m}" for m in args.recompute_modules),
        "tokens_per_s": tokens_per_s, "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else None,
        "mfu_actual": tflops_actual / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0,
        "static_memory_gb": static_gb,
        "step_ms": 1000 * elapsed / args.steps,
        "last_loss": float(last[0] / last[1]) if last is not None else None,
    }
    if args.profile and cuda:
        from profile_breakdown import kernel_breakdown, top_kernels
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        result["breakdown_ms_per_step"] = kernel_breakdown(prof, 2)
        # Device time is summed over kernels; the rest of the step the GPU waited for the host.
        result["gpu_idle_ms_per_step"] = round(result["step_ms"] - result["breakdown_ms_per_step"]["total"], 2)
        result["top_kernels_ms_per_step"] = top_kernels(prof, 2)
    if args.host_profile and cuda:
        result["host"] = host_profile(step)
    return result


def host_profile(step) -> dict:
    """Where the host makes the GPU wait: every synchronising call of one step (with the Python line
    that made it) and the CPU ops with the most self time over two profiled steps."""
    import collections
    import traceback
    import warnings

    from torch.profiler import ProfilerActivity, profile

    sync_sites = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in f.filename][-4:]
            sync_sites[" <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(frames))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    cpu_ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:25]
    return {
        "syncs_per_step": dict(sync_sites.most_common(20)),
        "top_cpu_ops_ms_per_step": [
            (f"x{e.count // 2:<5d} {e.key[:80]}", round(e.self_cpu_time_total / 2000.0, 2)) for e in cpu_ops
        ],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-size", default="1.5B")
    parser.add_argument("--hf-config", default=None, help="a config.json (or its folder) instead of --model-size")
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--packed-docs", type=int, default=1, help="documents per row (thd path) when > 1")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peer", action="store_true", help="also run the HF transformers peer")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--host-profile", action="store_true", help="list host syncs and CPU-heavy ops")
    parser.add_argument("--packed-kernel", choices=("auto", "flex"), default="auto",
                        help="packed rows: varlen flash attention where available (auto) or FlexAttention")
    parser.add_argument("--no-grad-accum-fusion", action="store_true",
                        help="bf16 weight gradients added to the fp32 main grads by DDP's hooks (unfused)")
    parser.add_argument("--unfused-loss", action="store_true", help="materialise logits (megatron's CE)")
    parser.add_argument("--disable", nargs="*", default=[], help="TransformerConfig fusion flags to turn off")
    parser.add_argument("--recompute-swiglu", action="store_true", help="MLP recomputes its SwiGLU output")
    parser.add_argument("--recompute-modules", nargs="*", default=[], help="selective recompute, e.g. layernorm")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.hf_config:
        from megatron_autoalign.models import load_hf_config

        hf_config = load_hf_config(args.hf_config)
    else:
        hf_config = hf_config_for(args.model_size)
    results = [run_ours(args, hf_config)]
    gc.collect()  # our model, DDP buffers and optimizer state (reference cycles) go before the peer runs
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rank = torch.distributed.get_rank()
    if args.peer and rank == 0 and torch.cuda.is_available():
        from hf_peer import run_hf_peer

        results.append(run_hf_peer(hf_config, args.seq_length, args.micro_batch_size, args.steps, args.warmup))
    if rank == 0:
        where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        shape = args.hf_config or args.model_size
        print(f"\n{shape} seq {args.seq_length} mbs {args.micro_batch_size} on {where}")
        print(f"{'system':60s} {'tokens/s':>10s} {'MFU':>6s} {'formula':>7s} {'peak GB':>8s} {'static GB':>9s}")
        for r in results:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            actual = f"{100 * r['mfu_actual']:.1f}%" if r.get("mfu_actual") else "-"
            static = f"{r['static_memory_gb']:9.1f}" if "static_memory_gb" in r else " " * 8 + "-"
            print(f"{r['system']:60s} {r['tokens_per_s']:10.0f} {actual:>6s} {mfu:>7s} {r['peak_memory_gb']:8.1f} {static}")
        if len(results) == 2:
            print(f"ratio ours/peer: {results[0]['tokens_per_s'] / results[1]['tokens_per_s']:.2f}x")
        for r in results:
            if "breakdown_ms_per_step" in r:
                print(f"step {r['step_ms']:.1f} ms; GPU idle {r['gpu_idle_ms_per_step']} ms; kernels (ms/step):",
                      r["breakdown_ms_per_step"])
                for name, ms in r["top_kernels_ms_per_step"]:
                    print(f"  {ms:8.2f}  {name}")
            if "host" in r:
                print("host syncs in one step:", r["host"]["syncs_per_step"])
                for name, ms in r["host"]["top_cpu_ops_ms_per_step"]:
                    print(f"  cpu {ms:8.2f}  {name}")
        out = json.dumps({"args": vars(args), "results": results}, indent=1)
        print(out)
        if args.json:
            with open(args.json, "w") as f:
                f.write(out)


if __name__ == "__main__":
    main()
