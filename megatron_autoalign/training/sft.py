"""SFT entry point: ``torchrun ... -m megatron_autoalign.training.sft <Megatron-LM flags>``."""

import sys


def main(argv=None) -> int:
    from .help import print_help, wants_help

    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        return print_help("sft", "python -m megatron_autoalign.training.sft")
    from .loop import main as run
    from .sft_task import SFTTask

    return run(SFTTask, argv)


if __name__ == "__main__":  # guard: dist_checkpointing may spawn processes that re-import this module
    sys.exit(main())
