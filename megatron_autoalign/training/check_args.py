"""``python -m megatron_autoalign.training.check_args --task sft|dpo --world-size N -- FLAGS``

The training flags checked once, before torchrun starts any worker (the launch scripts run it): an unknown
or bad flag (say, a typo in ``EXTRA_ARGS``) is one line on stderr and exit code 2, instead of a usage
message from every rank followed by the launcher's traceback. Checks the same parse and cross-flag rules
the workers apply; what needs the data or the model (sequence length, checkpoint shapes) is checked by
the workers as before.
"""

from __future__ import annotations

import sys

EXIT_CONFIG_ERROR = 2


def check(task_cls, argv: list[str], world_size: int) -> None:
    """Raise ``ArgumentError`` (one line) for flags the training entry point would refuse."""
    from . import arguments
    from .config import config_from_flags

    flags = arguments.build_parser(task_cls).parse_args(argv)  # its errors are one-line ArgumentErrors
    config_from_flags(vars(flags), world_size, task_cls)


def main(argv=None) -> int:
    from .train import resolve_task

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv[:2] != ["--task", argv[1]] or argv[2] != "--world-size":
        print("usage: python -m megatron_autoalign.training.check_args --task sft|dpo --world-size N -- FLAGS",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    task, world_size, flags = argv[1], int(argv[3]), argv[argv.index("--") + 1:]
    try:
        check(resolve_task(task), flags, world_size)
    except (ValueError, FileNotFoundError) as e:  # ArgumentError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
