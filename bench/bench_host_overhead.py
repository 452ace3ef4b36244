"""Host cost vs GPU cost of the local spec's small per-layer ops (forward + backward), on one GPU.

The 1.5B / 8k training step is limited by the host (docs/PERFORMANCE.md): what an op costs the CPU to
launch matters as much as what its kernels cost the GPU. For each candidate implementation this prints
the host time per forward+backward call (tiny tensors, so the GPU is never the limit) and the GPU time
per call at the real shape (8192 tokens, Qwen2.5-1.5B widths), as a table and JSON.

Use the host column. The GPU column is only indicative for the compiled ops: they are compiled for the
tiny shape first, so the 8k shape runs torch.compile's dynamic-shape recompilation (for the compiled
RMSNorm it printed 0.85 ms where the training profile shows ~0.06 ms per layer); kernel times come from
``bench_model_step.py --profile``.

    python bench/bench_host_overhead.py
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F


def _time_host(fn, make_inputs, iters=300) -> float:
    """Microseconds of host time per call, measured on tiny inputs (launch-bound)."""
    inputs = make_inputs(8)
    for _ in range(20):
        fn(*inputs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn(*inputs)
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - start) / iters


def _time_gpu(fn, make_inputs, iters=30) -> float:
    """Milliseconds of GPU time per call at 8192 tokens."""
    inputs = make_inputs(8192)
    for _ in range(3):
        fn(*inputs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(*inputs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _fwd_bwd(op):
    def run(*inputs):
        out = op(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            if isinstance(t, torch.Tensor):
                t.grad = None

    return run


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF Qwen2RMSNorm's arithmetic (normalise in fp32, cast, scale): what the local spec compiled before
    it switched to F.rms_norm."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def cases(hidden=1536, ffn=8960):
    from megatron.core.fusions.fused_bias_dropout import bias_dropout_add_fused_train
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    from megatron_autoalign.models.compiled import kernel
    from megatron_autoalign.models.mlp import swiglu

    bf16 = dict(device="cuda", dtype=torch.bfloat16)

    def norm_inputs(n):
        return (torch.randn(n, 1, hidden, **bf16, requires_grad=True), torch.ones(hidden, **bf16, requires_grad=True))

    def pair_inputs(n):
        return (torch.randn(n, 1, hidden, **bf16, requires_grad=True), torch.randn(n, 1, hidden, **bf16, requires_grad=True))

    def fc1_inputs(n):
        return (torch.randn(n, 1, 2 * ffn, **bf16, requires_grad=True),)

    compiled_norm = kernel(hf_rms_norm, True)
    return {
        "rmsnorm: compiled HF arithmetic": (lambda x, w: compiled_norm(x, w, 1e-6), norm_inputs),
        "rmsnorm: F.rms_norm": (lambda x, w: F.rms_norm(x, (hidden,), w, 1e-6), norm_inputs),
        "residual add: megatron fused bias-dropout-add": (lambda x, r: bias_dropout_add_fused_train((x, None), r, 0.0), pair_inputs),
        "residual add: plain x + residual": (lambda x, r: r + x, pair_inputs),
        "swiglu: megatron fused": (lambda x: bias_swiglu_impl(x, None), fc1_inputs),
        "swiglu: eager silu * up": (lambda x: swiglu(x), fc1_inputs),
    }


def main():
    rows = []
    for name, (op, make_inputs) in cases().items():
        run = _fwd_bwd(op)
        rows.append({"op": name, "host_us_per_call": round(_time_host(run, make_inputs), 1),
                     "gpu_ms_per_call_8k": round(_time_gpu(run, make_inputs), 3)})
    print(f"\nforward + backward per call on {torch.cuda.get_device_name()}")
    print(f"{'op':50s} {'host us':>8s} {'GPU ms @8k':>10s}")
    for r in rows:
        print(f"{r['op']:50s} {r['host_us_per_call']:8.1f} {r['gpu_ms_per_call_8k']:10.3f}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
