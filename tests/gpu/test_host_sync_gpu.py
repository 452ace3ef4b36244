"""GPU: the two ways the training step moves small values between host and GPU do not make the host wait
for GPU work queued before them (the point of both: the host launches the next step's kernels while the
GPU still runs the optimizer update). Each test queues ~0.1 s of matrix products first and checks that
they are still running when the call returns, and that the values are right once they have run."""

import pytest
import torch

from megatron_autoalign.runtime.transfer import to_device_async
from megatron_autoalign.training.deferred import DeferredScalars

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _queue_long_work() -> torch.cuda.Event:
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(100):
        x = (x @ x).clamp_(-1, 1)
    done = torch.cuda.Event()
    done.record()
    return done


def test_deferred_scalars_do_not_wait_for_later_work():
    a = torch.full((4,), 2.0, device="cuda")
    deferred = DeferredScalars({"sum": a.sum(), "max": a.max()})
    later = _queue_long_work()
    assert deferred.get() == {"sum": 8.0, "max": 2.0}
    assert not later.query(), "get() waited for the work queued after the values"
    torch.cuda.synchronize()


def test_host_to_device_copy_does_not_wait_for_earlier_work():
    earlier = _queue_long_work()
    host = torch.arange(1000, dtype=torch.int32)
    on_gpu = to_device_async(host, "cuda")
    assert not earlier.query(), "the copy waited for the work queued before it"
    torch.cuda.synchronize()
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), host)
