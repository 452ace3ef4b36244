"""torchrun worker: SFT whose loss turns NaN at chosen iterations (to test step skipping).

Usage: torchrun ... sft_nan_worker.py POISONED_ITERATIONS(comma list) -- <sft flags>
"""

import sys


def main():
    import torch

    from megatron_autoalign.training.loop import main as run
    from megatron_autoalign.training.sft_task import SFTTask

    poisoned = {int(x) for x in sys.argv[1].split(",")}
    argv = sys.argv[sys.argv.index("--") + 1:]

    class PoisonedSFT(SFTTask):
        step = 0

        def prepare_global_batch(self, batches, ctx):
            PoisonedSFT.step += 1

        def forward_step(self, batch, model):
            output, loss_func = super().forward_step(batch, model)
            if PoisonedSFT.step not in poisoned:
                return output, loss_func

            def nan_loss(out):
                loss, count, metrics = loss_func(out)
                nan = torch.tensor(float("nan"), device=loss.device)
                return loss * nan, count, {k: v * nan for k, v in metrics.items()}

            return output, nan_loss

    sys.exit(run(PoisonedSFT, argv))


if __name__ == "__main__":
    main()
