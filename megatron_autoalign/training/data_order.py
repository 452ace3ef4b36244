"""Which sample indices each step / micro-batch / DP rank reads.

The order is a pure function of (seed, epoch, consumed samples), so resuming at ``consumed_samples``
continues exactly where the interrupted run stopped without saving any iterator state.
Each epoch is a fresh permutation of the dataset (``--no-shuffle`` keeps the file order).
"""

from __future__ import annotations

import numpy as np


class SampleOrder:
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError("empty dataset")
        self.n, self.seed, self.shuffle = num_samples, seed, shuffle
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            self._epoch = epoch
            self._perm = (
                np.random.RandomState((self.seed + 1000003 * epoch) % 2**32).permutation(self.n)
                if self.shuffle else np.arange(self.n)
            )
        return self._perm

    def indices(self, start: int, count: int) -> list[int]:
        """Dataset indices of global samples [start, start + count) (epochs wrap)."""
        out = []
        for k in range(start, start + count):
            out.append(int(self._permutation(k // self.n)[k % self.n]))
        return out


def microbatch_indices(global_indices: list[int], micro_batch_size: int, dp_size: int, dp_rank: int) -> list[list[int]]:
    """Split one global batch: micro-batch m of DP rank d gets samples [(m*dp + d)*mbs, ... + mbs) (megatron's order)."""
    per_mb = micro_batch_size * dp_size
    out = []
    for m in range(len(global_indices) // per_mb):
        lo = m * per_mb + dp_rank * micro_batch_size
        out.append(global_indices[lo : lo + micro_batch_size])
    return out
