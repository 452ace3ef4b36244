"""Group a torch.profiler trace's CUDA kernel time into matmul / attention / optimizer / loss / elementwise."""

from __future__ import annotations

CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex", "cudnn")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "matmul", "cublas")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("communication", ("nccl",)),
)


def categorize(kernel_name: str) -> str:
    name = kernel_name.lower()
    for category, needles in CATEGORIES:
        if any(n in name for n in needles):
            return category
    return "elementwise/other"


def kernel_breakdown(prof, steps: int) -> dict:
    """Milliseconds of device time per step by category, from a finished torch.profiler.profile."""
    totals: dict[str, float] = {}
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(evt, "self_cuda_time_total", 0.0)
        if not device_us or evt.key.startswith("ProfilerStep"):
            continue
        cat = categorize(evt.key)
        totals[cat] = totals.get(cat, 0.0) + device_us / 1000.0 / steps
    totals["total"] = sum(totals.values())
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def top_kernels(prof, steps: int, n: int = 40) -> list[tuple[str, float]]:
    """The ``n`` kernels with the most device time per step (ms), with launches per step, for explaining
    the breakdown."""
    rows = []
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)
        if device_us and not evt.key.startswith("ProfilerStep"):
            rows.append((f"x{evt.count // steps:<5d} {evt.key[:100]}", round(device_us / 1000.0 / steps, 2)))
    return sorted(rows, key=lambda r: -r[1])[:n]
