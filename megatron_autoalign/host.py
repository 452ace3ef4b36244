"""Facts about this machine that several steps ask: is a process alive, can a folder be written."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unwritable_reason(folder: str, create: bool = True) -> str | None:
    """Write a probe file in ``folder`` (created if ``create``; else in its nearest existing ancestor, leaving
    nothing behind): None if that works, else the OS's reason (e.g. 'Read-only file system')."""
    target = os.path.abspath(folder)
    if not create:
        while not os.path.exists(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)
    try:
        if create:
            os.makedirs(target, exist_ok=True)
        elif not os.path.isdir(target):
            raise NotADirectoryError(20, "Not a directory")
        probe = os.path.join(target, f".write_test.tmp{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
