"""Before preprocessing writes anything: the output prefix's folder must be writable, a complete dataset
already there is only replaced with ``--overwrite`` (a checkpoint trained on it would otherwise resume on
different data; the trainer refuses that too), and temporary files that an interrupted run left behind
(``PREFIX_*.tmpPID*``, tens of MB each) are removed when that process is gone."""

from __future__ import annotations

import glob
import os
import re

from ..host import pid_alive, unwritable_reason
from .conversations import DataError
from .manifest import manifest_path

_TMP = re.compile(r"\.tmp(\d+)")


def prepare_output(prefix: str, overwrite: bool) -> list[str]:
    """Check and tidy the output location (DataError, one line); returns the stale files removed."""
    folder = os.path.dirname(os.path.abspath(prefix))
    reason = unwritable_reason(folder)
    if reason:
        raise DataError(f"{folder}: cannot write the output here ({reason}); choose another output prefix")
    if os.path.exists(manifest_path(prefix)) and not overwrite:
        raise DataError(f"{manifest_path(prefix)}: a complete dataset is already at this prefix; pass --overwrite "
                        f"to replace it (a checkpoint trained on it will then refuse to resume on the new data)")
    removed = []
    for path in glob.glob(glob.escape(prefix) + "_*.tmp*"):
        m = _TMP.search(path[len(prefix):])
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            os.remove(path)
            removed.append(path)
    return removed
