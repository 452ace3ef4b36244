"""The one error type of checkpoint I/O: its message is a single line naming the file and the reason."""


class CheckpointError(Exception):
    """Bad or unsupported checkpoint input; the convert CLI prints it on one line and exits with 2."""
