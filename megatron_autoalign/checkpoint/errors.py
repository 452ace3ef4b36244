"""The one error type of checkpoint I/O: its message is a single line naming the file and the reason."""


class CheckpointError(Exception):
    """Bad or unsupported checkpoint input; the convert CLI prints it on one line and exits with 2."""


def run_command(body) -> int:
    """Run a checkpoint CLI's ``body()``: a CheckpointError becomes one line on stderr and exit code 2;
    the process group that loading/saving created is torn down either way."""
    import sys

    try:
        body()
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        from ..runtime import destroy_distributed

        destroy_distributed()
    return 0
