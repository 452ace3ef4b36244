"""The checkpoint folder's lock (training/run_lock.py): a live owner refuses a second run in one line, a
dead or silent owner's lock is taken over with a note, a run removes only its own lock."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from megatron_autoalign.training.run_lock import LOCK_NAME, STALE_AFTER_S, LockError, RunLock


def _write_lock(folder, **holder):
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"started": "2026-12-01 20:00:00", **holder}))
    return path


def test_live_owner_on_this_host_refuses(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, host=socket.gethostname(), pid=owner.pid)
        with pytest.raises(LockError) as e:
            RunLock(str(tmp_path)).acquire()
        message = str(e.value)
        assert "\n" not in message
        assert f"host {socket.gethostname()}, pid {owner.pid}" in message and str(tmp_path / LOCK_NAME) in message
    finally:
        owner.kill()
        owner.wait()
    # the same lock once its owner is gone: stale, taken over
    lock = RunLock(str(tmp_path))
    assert f"pid {owner.pid} on this host is gone" in lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_other_host_is_stale_only_when_silent(tmp_path):
    path = _write_lock(tmp_path, host="node-that-is-not-this-one", pid=1)
    with pytest.raises(LockError, match="host node-that-is-not-this-one, pid 1"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - STALE_AFTER_S - 60
    os.utime(path, (old, old))
    lock = RunLock(str(tmp_path))
    assert "host node-that-is-not-this-one last refreshed it 16 min ago" in lock.acquire()
    lock.release()


def test_release_keeps_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(str(tmp_path))
    assert lock.acquire() is None
    _write_lock(tmp_path, host="elsewhere", pid=2)  # someone took it over meanwhile
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere"
