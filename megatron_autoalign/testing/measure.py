"""Run the convert entry point in a fresh interpreter and report its wall time and peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import time

# The child: the convert entry point, then its own peak RSS (and its children's: dist_checkpointing may
# start writer processes, which share the parent's pages). The peak is VmHWM, which starts afresh at exec;
# Linux carries ru_maxrss over from the process that forked us (a large parent would show through).
_CHILD = r"""
import json, resource, sys
from megatron_autoalign.checkpoint.convert import main
rc = main(sys.argv[1:])
try:
    self_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
except OSError:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("MEASURE_RSS " + json.dumps({"rc": rc, "self_kb": self_kb,
    "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measure_convert(args: list[str], env: dict | None = None) -> dict:
    """{"seconds", "peak_rss_gb", "child_peak_rss_gb"} of one conversion; raises on failure."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args, "--no-progress"], capture_output=True, text=True,
                          env=env)
    seconds = time.time() - start
    line = [l for l in proc.stdout.splitlines() if l.startswith("MEASURE_RSS ")]
    if proc.returncode or not line or json.loads(line[0].split(" ", 1)[1])["rc"]:
        raise RuntimeError(f"conversion failed ({args}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss = json.loads(line[0].split(" ", 1)[1])
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss["self_kb"] / 2**20, 3),
            "child_peak_rss_gb": round(rss["children_kb"] / 2**20, 3)}
