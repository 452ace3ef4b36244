"""Packing conversations into rows of at most seq_len tokens.

Best-fit decreasing over a bounded buffer: memory stays O(buffer), fill is close to optimal for a
buffer of a few thousand conversations. Without packing every conversation is its own row.
"""
from __future__ import annotations

import bisect
from typing import Iterator


class Packer:
    def __init__(self, seq_len: int, enabled: bool, buffer_size: int = 8192):
        self.seq_len, self.enabled, self.buffer_size = seq_len, enabled, buffer_size
        self.buf: list = []

    def add(self, length: int, item) -> Iterator[list]:
        """Add one conversation; yields finished rows (lists of items) when the buffer is full."""
        if not self.enabled:
            yield [item]
            return
        self.buf.append((length, item))
        if len(self.buf) >= self.buffer_size:
            yield from self.flush()

    def flush(self) -> Iterator[list]:
        rows = pack_best_fit(self.buf, self.seq_len)
        self.buf = []
        yield from rows


def pack_best_fit(items: list, capacity: int) -> list[list]:
    """items: [(length, payload)] each length <= capacity. Returns rows of payloads; longest first, each
    into the row with the least room that still fits it (ties: the older row); rows in creation order."""
    order = sorted(range(len(items)), key=lambda k: (-items[k][0], k))  # stable: deterministic output
    rows: list[list] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, row index)
    for k in order:
        length, payload = items[k]
        j = bisect.bisect_left(free, (length, -1))
        if j < len(free):
            room, r = free.pop(j)
            rows[r].append(payload)
            if room - length > 0:
                bisect.insort(free, (room - length, r))
        else:
            rows.append([payload])
            if capacity - length > 0:
                bisect.insort(free, (capacity - length, len(rows) - 1))
    return rows
