"""training/preemption.py: stop signals only raise a flag (the first one is kept), handlers are restored, and
processes started during a save (megatron's spawned result-queue server, its forked writers) do not die of a
signal sent to the whole process tree."""

import multiprocessing as mp
import os
import signal
import time

from megatron_autoalign.training.preemption import STOP_SIGNALS, StopSignals, saving


def test_first_signal_is_kept_and_handlers_restored():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with StopSignals() as stop:
        assert stop.agree(None) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.agree(None) == "SIGUSR1"
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def _blocked(pid: int) -> int:
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("SigBlk")).split()[1], 16)


def test_processes_started_during_a_save_survive_a_stop_signal():
    with StopSignals() as stop:
        with saving():
            manager = mp.get_context("spawn").Manager()  # as megatron's FileSystemWriterAsync starts it
        queue, pid = manager.Queue(), manager._process.pid
        try:
            for s in STOP_SIGNALS:
                assert _blocked(pid) & (1 << (s - 1)), signal.Signals(s).name
            os.kill(pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # this process: recorded, not fatal
            time.sleep(0.3)
            queue.put("still there")
            assert queue.get() == "still there"
            assert stop.agree(None) == "SIGTERM"
        finally:
            manager.shutdown()
