"""One run per checkpoint folder: ``SAVE/training.lock`` holds the owner's host, pid and start time.

Two trainers saving into one folder overwrite each other's checkpoints (a relaunch while the previous run's
trainers still live, e.g. after its launch script was killed). Rank 0 creates the lock atomically before
training and removes it at the end. A lock whose owner is gone is stale and taken over: on the same host
when its pid no longer runs, on another host (a shared file system) when the owner has not refreshed it for
``STALE_AFTER_S`` (rank 0 refreshes it every minute while it trains).
"""

from __future__ import annotations

import json
import os
import socket
import time

from megatron_autoalign.host import pid_alive

LOCK_NAME = "training.lock"
STALE_AFTER_S = 15 * 60
REFRESH_EVERY_S = 60


class LockError(ValueError):
    """Another live run holds the folder; the message is one line."""


class RunLock:
    def __init__(self, save_dir: str):
        self.path = os.path.join(save_dir, LOCK_NAME)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False
        self._refreshed = 0.0

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over. Raises LockError when held."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, reason = self._holder()
                if reason is None:
                    raise LockError(
                        f"{self.path}: another run (host {holder.get('host')}, pid {holder.get('pid')}, started "
                        f"{holder.get('started')}) is training into this folder; stop it first (it saves and "
                        f"exits on SIGTERM), or delete the lock file if that run is gone") from None
                note = f"{self.path}: took over a stale lock ({reason})"
                os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self.held, self._refreshed = True, time.time()
            return note
        raise LockError(f"{self.path}: another run created this lock at the same moment; try again")

    def _holder(self) -> tuple[dict, str | None]:
        """(the lock's content, why it is stale or None if its owner may be alive)."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return {}, "removed meanwhile"
        except (ValueError, OSError):
            return {}, "unreadable"
        if holder.get("host") == self.owner["host"]:
            if holder.get("pid") == os.getpid():
                return holder, "left by an earlier run in this process"
            if not pid_alive(int(holder.get("pid", 0))):
                return holder, f"pid {holder.get('pid')} on this host is gone"
            return holder, None
        if age > STALE_AFTER_S:
            return holder, f"host {holder.get('host')} last refreshed it {age / 60:.0f} min ago"
        return holder, None

    def refresh(self) -> None:
        """Show that the owner is alive (cheap; at most once a minute)."""
        if self.held and time.time() - self._refreshed > REFRESH_EVERY_S:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._refreshed = time.time()

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                with open(self.path) as f:
                    mine = json.load(f) == self.owner
            except (OSError, ValueError):
                mine = False
            if mine:
                os.remove(self.path)
