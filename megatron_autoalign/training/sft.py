"""SFT entry point: ``torchrun ... -m megatron_autoalign.training.sft <Megatron-LM flags>``."""

import sys


def main(argv=None) -> int:
    from .loop import main as run
    from .sft_task import SFTTask

    return run(SFTTask, argv)


if __name__ == "__main__":  # guard: dist_checkpointing may spawn processes that re-import this module
    sys.exit(main())
