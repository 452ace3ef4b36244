"""Stopping on a signal: what a cluster scheduler sends before it kills a job (preemption, ``scancel``,
a time limit), or a user's Ctrl-C.

SIGTERM, SIGINT, SIGUSR1 and SIGHUP only raise a flag. The training loop asks every rank whether any rank
saw one after each step (``agree``), so all ranks stop after the same iteration, save one complete
checkpoint there and exit with ``EXIT_STOPPED``. A signal that arrives while a checkpoint is being written
lets the save finish (``saving``), and the run stops right after it.

Exit codes of the training entry points: 0 = reached ``--train-iters`` (or ``--exit-interval``),
``EXIT_STOPPED`` (75, sysexits' EX_TEMPFAIL: "try again later") = stopped by a signal after saving, resume
by running the same command again; 2 = bad configuration, data or checkpoint (one line); 1 = anything else.
"""

from __future__ import annotations

import contextlib
import os
import signal

import torch
import torch.distributed as dist

EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class StopSignals:
    """Records the first stop signal this process receives (installed as a context manager)."""

    def __init__(self):
        self.received: int = 0  # signal number, 0 = none
        self._previous = {}

    def _handle(self, signum, _frame):
        # No print here: a handler that writes to stdout while the interrupted code is writing to it
        # raises "reentrant call" inside the stream.
        if not self.received:
            self.received = signum

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *_):
        for s, h in self._previous.items():
            signal.signal(s, h)

    def agree(self, group) -> str | None:
        """The stop signal's name if any rank received one, on every rank (a collective over ``group``,
        a CPU group: a GPU all-reduce read back every step would make the host wait for the GPU)."""
        flag = torch.tensor([self.received])
        if group is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return signal.Signals(int(flag.item())).name if flag.item() else None


@contextlib.contextmanager
def saving():
    """Hold stop signals back from the processes a checkpoint save starts (megatron's writer processes
    and its result queue's server inherit this thread's signal mask), so that a signal to the whole
    process tree cannot kill the save halfway. This process still records the signal: Python runs its
    handler in the main thread as soon as any thread takes delivery, or when the mask is lifted."""
    from multiprocessing import resource_tracker

    # Started later, multiprocessing's resource tracker would unblock SIGINT and SIGTERM in this thread
    # (it blocks them around its own start): start it first (it ignores those signals itself).
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def report_exit_code(code: int) -> int:
    """Leave ``code`` where the launch scripts find it (``$MA_EXIT_STATUS_FILE``): torchrun exits 1 whatever
    code its workers exit with. One process per node writes it (local rank 0)."""
    path = os.environ.get("MA_EXIT_STATUS_FILE")
    if path and os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            with open(path, "w") as f:
                f.write(f"{code}\n")
        except OSError:
            pass
    return code
