"""Output to a pipe whose reader died (runtime/pipe_safe.py): the writer carries on instead of crashing."""

import subprocess
import sys

_WRITER = """
import sys, time
{protect}
print("first", flush=True)
time.sleep(1.0)  # the reader closes its end meanwhile
for i in range(1000):
    print("line", i, flush=True)
    print("err", i, file=sys.stderr, flush=True)
open(sys.argv[1], "w").write("done")
"""


def _run(tmp_path, protect: str) -> tuple[int, str]:
    done = tmp_path / f"done{len(protect)}"
    p = subprocess.Popen([sys.executable, "-c", _WRITER.format(protect=protect), str(done)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert p.stdout.readline() == b"first\n"
    p.stdout.close()  # the reader is gone (tee killed)
    return p.wait(timeout=60), done.read_text() if done.exists() else ""


def test_dead_reader_does_not_stop_the_writer(tmp_path):
    protected = "from megatron_autoalign.runtime.pipe_safe import protect_stdio; protect_stdio()"
    assert _run(tmp_path, protected) == (0, "done")
    # without it, the first print after the reader died raises BrokenPipeError
    code, done = _run(tmp_path, "")
    assert code != 0 and done == ""
