"""Read scalars off the GPU without making the host wait for the GPU's queued work.

``tensor.item()`` copies on the current stream, so it waits for everything queued before it. At the end of
a training step that is the whole optimizer update: the host would sit idle for it instead of launching the
next step's forward, and a 1.5B step is limited by how fast the host launches kernels. Here the copy to
pinned host memory is queued right behind the values it reads, an event marks its end, and ``get()`` waits
for that event only. The training loop calls ``get()`` one step later, after the next step's grad-norm
check has already waited for the backward, so the values are there and nothing stalls.
"""

from __future__ import annotations

import torch


class DeferredScalars:
    def __init__(self, scalars: dict[str, torch.Tensor]):
        self.names = list(scalars)
        stacked = torch.stack([v.detach().reshape(()).to(torch.float64) for v in scalars.values()])
        self.event = None
        if stacked.is_cuda:
            self.host = torch.empty(stacked.shape, dtype=torch.float64, pin_memory=True)
            self.host.copy_(stacked, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = stacked

    def get(self) -> dict[str, float]:
        if self.event is not None:
            self.event.synchronize()
        return dict(zip(self.names, self.host.tolist()))
