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


def unwritable_reason(folder: str) -> str | None:
    """Create ``folder`` if needed and write a probe file in it: None if that works, else the OS's reason
    (e.g. 'Read-only file system', 'Permission denied')."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write_test.tmp{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
