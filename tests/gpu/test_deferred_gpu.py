"""GPU: DeferredScalars reads values queued before a long stretch of GPU work without waiting for that work
(which is the point: the training log must not make the host wait for the optimizer update)."""

import pytest
import torch

from megatron_autoalign.training.deferred import DeferredScalars

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_values_arrive_without_waiting_for_later_work():
    a = torch.full((4,), 2.0, device="cuda")
    deferred = DeferredScalars({"sum": a.sum(), "max": a.max()})
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(100):  # ~0.1 s of matrix products queued after the values
        x = (x @ x).clamp_(-1, 1)
    later = torch.cuda.Event()
    later.record()
    assert deferred.get() == {"sum": 8.0, "max": 2.0}
    assert not later.query(), "get() waited for the work queued after the values"
    torch.cuda.synchronize()
