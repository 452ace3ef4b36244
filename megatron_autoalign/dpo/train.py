"""DPO entry point: ``torchrun ... -m megatron_autoalign.dpo.train <Megatron-LM flags> --beta 0.1 --loss-type sigmoid``.

The shared training loop (``training/loop.py``) with the DPO task; same as
``python -m megatron_autoalign.training.train --task dpo``.
"""
import sys


def main(argv=None) -> int:
    from ..training.help import print_help, wants_help

    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        return print_help("dpo", "python -m megatron_autoalign.dpo.train")
    from ..training.loop import main as run
    from .task import DPOTask

    return run(DPOTask, argv)


if __name__ == "__main__":  # guard: dist_checkpointing may spawn processes that re-import this module
    sys.exit(main())
