"""Run megatron-core 0.16.1 on a machine without CUDA (CPU + gloo).

megatron-core assumes CUDA in a handful of places. ``enable()`` redirects exactly those (``disable()``
puts them back; ``with enabled():`` for a block), only when CUDA is absent, so the same training code runs
in CI and for CPU smoke runs. ``init_distributed`` enables it on a machine without CUDA and
``destroy_distributed`` disables it again; each redirect is registered in ``patches.py``:

1. ``device="cuda"`` / ``torch.cuda.current_device()`` in factory calls, ``Tensor.cuda()``,
   ``Tensor.to("cuda")``, ``pin_memory=True``: a ``TorchFunctionMode`` (while enabled) rewrites any CUDA device
   to ``cpu`` and drops pinning. ``torch.cuda.current_device()`` returns ``cpu`` so that it can be
   passed as a device.
2. ``Tensor.type()`` compared against ``'torch.cuda.FloatTensor'`` etc. (optimizer, clip_grads):
   the mode answers with the CUDA type name for CPU tensors.
3. CUDA RNG state (``tensor_parallel.random``'s tracker forks, ``torch.cuda.manual_seed``): mapped onto
   the CPU default generator, so ``get_cuda_rng_tracker().fork()`` swaps CPU generator states.
4. ``torch.cuda.synchronize``/``empty_cache`` and stream waits: no-ops (CPU work is synchronous).
5. gloo lacks ``reduce_scatter_tensor``: emulated by all-reduce + slice (same numbers, more bytes;
   acceptable for CPU runs). ``barrier(device_ids=...)`` drops the CUDA-only argument.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from . import patches

_CPU = torch.device("cpu")


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU for every torch call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs and kwargs["device"] is not None and _is_cuda(kwargs["device"]):
            kwargs["device"] = _CPU
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


def _reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
    reduced = input.clone()
    # megatron issues this inside torch's _coalescing_manager, where all_reduce is only RECORDED and runs
    # at exit: the slice below would copy unreduced data. Step out of the coalescing state for this call.
    from torch.distributed import distributed_c10d as c10d

    pg = group or c10d._get_default_group()
    pending = c10d._world.pg_coalesce_state.pop(pg, None)
    try:
        dist.all_reduce(reduced, op=op, group=group)
    finally:
        if pending is not None:
            c10d._world.pg_coalesce_state[pg] = pending
    rank = dist.get_rank(group)
    n = output.numel()
    output.copy_(reduced.view(-1)[rank * n : (rank + 1) * n].view_as(output))
    return _DoneWork() if async_op else None


class _DoneWork:
    def wait(self, *args, **kwargs):
        return True

    def is_completed(self):
        return True


def enable() -> None:
    """Install the redirects (idempotent; registered in ``patches.py``). Only without CUDA."""
    if is_enabled():
        return
    assert not torch.cuda.is_available(), "cpu_compat is for machines without CUDA"
    replace = patches.replace
    patches.enter("torch-function-mode", _CudaToCpuMode())

    # Distinct function objects: torch.compile's rule table rejects one object under several names.
    for attribute, value in (
        ("current_device", lambda: _CPU),
        ("set_device", lambda *a, **k: None),
        ("synchronize", lambda *a, **k: None),
        ("empty_cache", lambda *a, **k: None),
    ):
        replace("cuda-device", torch.cuda, attribute, value)
    for attribute, value in (
        ("get_rng_state", lambda device=None: torch.get_rng_state()),
        ("set_rng_state", lambda state, device=None: torch.set_rng_state(state)),
        ("manual_seed", lambda seed: torch.default_generator.manual_seed(int(seed))),
        ("manual_seed_all", lambda seed: None),  # torch.manual_seed seeds the CPU generator
    ):
        replace("cuda-rng", torch.cuda, attribute, value)
    from megatron.core.tensor_parallel import random as mcore_random

    replace("cuda-rng", mcore_random, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
    replace("cuda-rng", mcore_random, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state))

    replace("gloo-reduce-scatter", dist, "reduce_scatter_tensor", _reduce_scatter_tensor)
    replace("gloo-reduce-scatter", dist, "_reduce_scatter_base", _reduce_scatter_tensor)
    # These modules bound the collective at import time.
    from megatron.core.distributed import param_and_grad_buffer
    from megatron.core.tensor_parallel import layers, mappings

    for module in (mappings, layers, param_and_grad_buffer):
        replace("gloo-reduce-scatter", module, "dist_reduce_scatter_func", _reduce_scatter_tensor)
    _barrier = dist.barrier
    replace("gloo-barrier", dist, "barrier",
            lambda group=None, async_op=False, device_ids=None: _barrier(group=group, async_op=async_op))


def disable() -> None:
    """Remove every redirect ``enable`` installed (the original torch / megatron-core functions return)."""
    patches.restore("cpu")


def is_enabled() -> bool:
    return "torch-function-mode" in patches.applied()


@contextlib.contextmanager
def enabled():
    """``with cpu_compat.enabled():`` the redirects for the block (left as found: on stays on)."""
    was = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was:
            disable()
