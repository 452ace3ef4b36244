"""Generic entry point: ``python -m megatron_autoalign.training.train --task sft|dpo <Megatron-LM flags>``."""

import importlib
import sys

# task name -> "module:Class"
TASKS = {
    "sft": "megatron_autoalign.training.sft_task:SFTTask",
    "dpo": "megatron_autoalign.dpo.task:DPOTask",
}


def resolve_task(name: str):
    if name not in TASKS:
        raise SystemExit(f"error: unknown --task {name!r}; known: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"error: task {name!r} is not available ({e})")


def main(argv=None) -> int:
    from .help import print_help, wants_help

    argv = list(sys.argv[1:] if argv is None else argv)
    name = "sft"
    if "--task" in argv:
        i = argv.index("--task")
        name = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i : i + 2]
    if wants_help(argv):
        return print_help(name, f"python -m megatron_autoalign.training.train --task {name}")
    from .loop import main as run

    return run(resolve_task(name), argv)


if __name__ == "__main__":
    sys.exit(main())
