"""Progress of a preprocessing run: bytes read of the input's size, with rate and ETA.

On a terminal it is a tqdm bar; otherwise (a cluster job logging to a file) a plain line every
``interval`` seconds, since a bar's carriage returns make an unreadable log.
"""
from __future__ import annotations

import sys
import time


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, reader, what: str, enabled: bool, interval: float = 30.0, stream=None):
        self.reader, self.what, self.interval = reader, what, interval
        self.stream = stream or sys.stderr
        self.records = self.tokens = 0
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        self.plain = enabled and not self.stream.isatty()
        if enabled and not self.plain:
            from tqdm import tqdm
            self.bar = tqdm(total=reader.size, unit="B", unit_scale=True, desc=f"reading {what}", mininterval=1.0,
                            file=self.stream)

    def update(self, records: int, tokens: int) -> None:
        self.records += records
        self.tokens += tokens
        done = min(self.reader.bytes_read, self.reader.size)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{self.records:,} {self.what}", refresh=False)
        elif self.plain and (now := time.perf_counter()) - self.last >= self.interval:
            self.last = now
            print(self.line(done, now - self.t0), file=self.stream, flush=True)

    def line(self, done: int, elapsed: float) -> str:
        size = self.reader.size
        eta = f", ETA {_duration(elapsed * (size - done) / done)}" if 0 < done < size else ""
        return (f"progress: {_mb(done)} of {_mb(size)} ({100 * done / size if size else 100:.0f}%), "
                f"{self.records:,} {self.what}, {self.tokens:,} tokens, "
                f"{self.tokens / max(elapsed, 1e-9):,.0f} tokens/s, {_duration(elapsed)} elapsed{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.reader.size - self.bar.n)
            self.bar.close()
