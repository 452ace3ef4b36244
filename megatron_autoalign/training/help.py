"""``--help`` of the training entry points without importing torch or megatron-core (seconds otherwise): the
entry points answer it first, from the flag definitions alone (``arguments.py`` and a task's light flags
module)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

# task -> its own flags (a module importable without torch), None when it has none
TASK_FLAGS = {"sft": None, "dpo": "megatron_autoalign.dpo.flags"}


def wants_help(argv) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def print_help(task: str, prog: str) -> int:
    import importlib

    from .arguments import build_parser

    module = TASK_FLAGS.get(task)
    flags = SimpleNamespace(add_arguments=importlib.import_module(module).add_arguments) if module else None
    parser = build_parser(flags)
    parser.prog = prog
    parser.print_help(sys.stdout)
    return 0
