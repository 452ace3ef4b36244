"""One rule for the small fused kernels of the local spec: compiled on GPU, plain eager torch on CPU.

Compiling on CPU would only slow the tests down (and needs a C++ toolchain); on GPU each function becomes
one kernel forward and one backward instead of many small elementwise ones.
"""

from __future__ import annotations

import torch

_compiled: dict = {}


def kernel(fn, on_cuda: bool, dynamic=None):
    """``fn`` itself on CPU; on CUDA ``torch.compile(fn)``, compiled once and reused."""
    if not on_cuda:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=dynamic)
    return _compiled[fn]
