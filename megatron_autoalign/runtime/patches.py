"""Every process-wide change this project makes to torch and megatron-core, in one registry.

Each entry of ``PATCHES`` names the attributes it replaces and why. They are written against the
megatron-core versions in ``MEGATRON_CORE_VERSIONS`` (setup.py pins one): ``check_megatron_core_version``
refuses any other before a patch is applied, because a replaced attribute that moved or changed meaning
would fail silently (set ``MA_UNTESTED_MEGATRON_CORE=1`` to try anyway). Every replacement goes through
``replace``, which keeps the original, so ``restore`` puts everything back: the CPU layer can be switched
off again (``cpu_compat.disable``) and tests start from an unpatched process.

Groups:
- ``cpu``: the CPU compatibility layer (``cpu_compat.py``): CUDA placements, RNG and collectives that
  megatron-core assumes, redirected to CPU + gloo. Only on machines without CUDA, only while enabled.
- ``gpu-fallback``: faster stand-ins for what megatron-core falls back to without apex / Transformer
  Engine (``optimizer_fallbacks.py``, ``wgrad_fusion.py``). Only when megatron-core would otherwise use
  its slow local version; never replaces apex or TE.

Not here, because they change no library: the training process's warning filters (``quiet.py``), its
stdout/stderr wrapper (``runtime/pipe_safe.py``) and its signal handlers (``training/preemption.py``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

MEGATRON_CORE_VERSIONS = ("0.16.1",)


@dataclass(frozen=True)
class Patch:
    name: str
    group: str  # cpu | gpu-fallback
    targets: tuple  # "module:attribute" replaced
    why: str


PATCHES = (
    Patch("torch-function-mode", "cpu", ("torch.overrides:<TorchFunctionMode on the mode stack>",),
          "device='cuda', .cuda(), .to('cuda'), pin_memory=True in megatron-core -> CPU; "
          "Tensor.type() answers CUDA type names (optimizer and grad clipping compare them)"),
    Patch("cuda-device", "cpu", ("torch.cuda:current_device", "torch.cuda:set_device", "torch.cuda:synchronize",
                                 "torch.cuda:empty_cache"),
          "current_device() is 'cpu' so it can be passed as a device; waits and cache frees are no-ops"),
    Patch("cuda-rng", "cpu", ("torch.cuda:get_rng_state", "torch.cuda:set_rng_state", "torch.cuda:manual_seed",
                              "torch.cuda:manual_seed_all", "megatron.core.tensor_parallel.random:_get_cuda_rng_state",
                              "megatron.core.tensor_parallel.random:_set_cuda_rng_state"),
          "megatron's CUDA RNG tracker forks swap the CPU generator's state instead"),
    Patch("gloo-reduce-scatter", "cpu", ("torch.distributed:reduce_scatter_tensor", "torch.distributed:_reduce_scatter_base",
                                         "megatron.core.tensor_parallel.mappings:dist_reduce_scatter_func",
                                         "megatron.core.tensor_parallel.layers:dist_reduce_scatter_func",
                                         "megatron.core.distributed.param_and_grad_buffer:dist_reduce_scatter_func"),
          "gloo has no reduce_scatter_tensor: all-reduce + slice (same numbers, more bytes)"),
    Patch("gloo-barrier", "cpu", ("torch.distributed:barrier",), "barrier(device_ids=...) is CUDA-only: dropped"),
    Patch("foreach-multi-tensor-ops", "gpu-fallback", ("megatron.core.optimizer.clip_grads:l2_norm_impl",
                                                       "megatron.core.optimizer.clip_grads:multi_tensor_scale_impl",
                                                       "megatron.core.optimizer.optimizer:multi_tensor_scale_impl"),
          "without apex/TE megatron computes the grad norm tensor by tensor with a host sync each; "
          "torch._foreach_* kernels instead (optimizer_fallbacks.py)"),
    Patch("wgrad-accumulation", "gpu-fallback", ("megatron.core.tensor_parallel.layers:fused_weight_gradient_mlp_cuda",
                                                 "megatron.core.tensor_parallel.layers:_grad_accum_fusion_available"),
          "without apex, weight gradients accumulate into the fp32 main grads by torch's mixed-dtype addmm "
          "(wgrad_fusion.py)"),
)
_BY_NAME = {p.name: p for p in PATCHES}
_SAVED: dict = {}  # (patch name, id(object), attribute) -> (object, original value); attribute None: a context
_checked = False


class MegatronCoreVersionError(RuntimeError):
    pass


def megatron_core_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def check_megatron_core_version() -> None:
    """Refuse to patch a megatron-core these patches were not written for (one-line error)."""
    global _checked
    if _checked:
        return
    version = megatron_core_version()
    if version not in MEGATRON_CORE_VERSIONS and not os.environ.get("MA_UNTESTED_MEGATRON_CORE"):
        raise MegatronCoreVersionError(
            f"megatron-core {version} is installed but this project's patches (runtime/patches.py) were written "
            f"for {', '.join(MEGATRON_CORE_VERSIONS)}: install megatron-core=={MEGATRON_CORE_VERSIONS[-1]} "
            "(or set MA_UNTESTED_MEGATRON_CORE=1 to try)")
    _checked = True


def replace(patch: str, obj, attribute: str, value) -> None:
    """Set ``obj.attribute = value`` on behalf of the registered ``patch``, keeping the original once."""
    if patch not in _BY_NAME:
        raise KeyError(f"unregistered patch {patch!r}: add it to runtime/patches.PATCHES")
    check_megatron_core_version()
    key = (patch, id(obj), attribute)
    if key not in _SAVED:
        _SAVED[key] = (obj, getattr(obj, attribute))
    setattr(obj, attribute, value)


def enter(patch: str, context) -> None:
    """Enter ``context`` (e.g. a TorchFunctionMode) on behalf of ``patch``; ``restore`` exits it."""
    if patch not in _BY_NAME:
        raise KeyError(f"unregistered patch {patch!r}: add it to runtime/patches.PATCHES")
    check_megatron_core_version()
    context.__enter__()
    _SAVED[(patch, id(context), None)] = (context, None)


def target(spec: str):
    """(object, attribute) of a ``module:attribute`` target."""
    module, attribute = spec.split(":")
    return importlib.import_module(module), attribute


def applied() -> list[str]:
    """Names of the patches in effect (in registry order)."""
    names = {key[0] for key in _SAVED}
    return [p.name for p in PATCHES if p.name in names]


def restore(group: str | None = None) -> None:
    """Put back every original replaced by the patches of ``group`` (all groups: None), newest first."""
    for key in reversed(list(_SAVED)):
        name, _, attribute = key
        if group is None or _BY_NAME[name].group == group:
            obj, original = _SAVED.pop(key)
            if attribute is None:
                obj.__exit__(None, None, None)
            else:
                setattr(obj, attribute, original)
