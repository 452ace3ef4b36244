"""torchrun worker: train with validation and checkpoints between log points, and record, on the last rank,
the loss each step's metric reduction actually produced (the truth the deferred log lines must carry).

Usage: torchrun --nproc_per_node N log_order_worker.py OUT_JSON -- SFT_ARGS...
"""

import json
import sys


def main():
    import torch.distributed as dist

    from megatron_autoalign.runtime import is_last_rank
    from megatron_autoalign.training import loop
    from megatron_autoalign.training.sft_task import SFTTask

    out, argv = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    truth, trainer = [], None
    reduce = loop.reduce_metrics

    def recording_reduce(outputs, group):
        metrics = reduce(outputs, group)
        if metrics and trainer.chunks[0].training:  # training steps only, not validation passes
            s, n = metrics["lm loss"].tolist()
            truth.append(s / max(n, 1))
        return metrics

    loop.reduce_metrics = recording_reduce
    trainer = loop.Trainer(SFTTask, argv)
    trainer.train()
    if is_last_rank():
        with open(out, "w") as f:
            json.dump({"truth": truth, "iterations": trainer.iteration}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
