"""to_device_async on CPU-only machines: a CPU target is a plain copy-free move, values unchanged
(the GPU behaviour, no synchronisation, is checked in tests/gpu/test_host_sync_gpu.py)."""

import torch

from megatron_autoalign.runtime.transfer import to_device_async


def test_cpu_target_returns_the_same_values():
    t = torch.arange(10)
    out = to_device_async(t, "cpu")
    assert out.device.type == "cpu" and torch.equal(out, t)
    assert out.data_ptr() == t.data_ptr()  # no copy on the same device
