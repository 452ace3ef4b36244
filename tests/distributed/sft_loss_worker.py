"""torchrun worker: run several SFT trainings (our loop) in one launch, one after another.

Usage: torchrun --nproc_per_node N sft_loss_worker.py RUNS_JSON
RUNS_JSON: a list of argv lists for ``megatron_autoalign.training.sft`` (each should pass its own
--log-json). Model-parallel state is rebuilt per run; the gloo process group is reused (saves the
start-up cost that dominates tiny CPU runs).
"""

import json
import sys


def main():
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_autoalign.training.loop import Trainer
    from megatron_autoalign.training.sft_task import SFTTask

    runs = json.load(open(sys.argv[1]))
    for argv in runs:
        Trainer(SFTTask, argv).train()
        parallel_state.destroy_model_parallel()
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
