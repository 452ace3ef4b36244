"""Host -> GPU copies that never make the host wait.

``tensor.to("cuda")`` from ordinary (pageable) host memory synchronises the current stream: the host waits
until the GPU has finished all work queued so far. In a training step that is the previous step's optimizer
update, during which the host could have been launching this step's kernels, and the 1.5B step is limited
by the host. From pinned memory with ``non_blocking=True`` the copy is queued in stream order instead, and
torch keeps the pinned buffer alive until the copy has run.
"""

from __future__ import annotations

import torch


def to_device_async(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; for a CPU tensor going to a GPU, through pinned memory without a synchronisation."""
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
