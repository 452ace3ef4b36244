"""Standard output and error that survive the death of the pipe they write into.

The launch scripts pipe the trainers' output through ``tee``. When a scheduler signals the whole job, ``tee``
dies with it, and the trainers' next ``print`` raised ``BrokenPipeError``: the run crashed on its way to the
checkpoint that the signal asked for. Here a write to a reader that is gone (EPIPE, or EIO from a terminal
that hung up) points that file descriptor at /dev/null and carries on: the output is lost, the run is not.
"""

from __future__ import annotations

import errno
import os
import sys

_READER_GONE = (errno.EPIPE, errno.EIO)


class _ReaderSafeStream:
    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            self._on_error(e)
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            self._on_error(e)

    def _on_error(self, e: OSError) -> None:
        if e.errno not in _READER_GONE:
            raise e
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())  # the buffered text now drains into /dev/null
        os.close(null)
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def protect_stdio() -> None:
    """Make ``sys.stdout``/``sys.stderr`` survive a dead reader (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ReaderSafeStream):
            try:
                stream.fileno()
            except (OSError, ValueError, AttributeError):
                continue  # not backed by a file descriptor (pytest's capture): nothing to protect
            setattr(sys, name, _ReaderSafeStream(stream))
