"""Experiment trackers: TensorBoard (``--tensorboard-dir``) and Weights & Biases (``--wandb-project``, Megatron-LM's
flag names), fed the same scalars by the step log on the rank that prints it.

W&B is an optional extra (``pip install -e ".[wandb]"``); ``WANDB_MODE=offline`` writes the run under
``--wandb-save-dir`` with no network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import importlib.util
import math
import os


def wandb_missing(args) -> str | None:
    """One-line reason --wandb-project cannot work here, or None."""
    if getattr(args, "wandb_project", None) and importlib.util.find_spec("wandb") is None:
        return "--wandb-project needs the wandb package: pip install -e \".[wandb]\" (or drop the flag)"
    return None


def wandb_dir(args) -> str:
    """--wandb-save-dir, else Megatron-LM's default: SAVE/wandb (the working directory without --save)."""
    return args.wandb_save_dir or os.path.join(args.save or ".", "wandb")


class Trackers:
    def __init__(self, args):
        self.tensorboard = self.wandb = None
        if args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(args.tensorboard_dir)
        if args.wandb_project:
            import wandb

            os.makedirs(wandb_dir(args), exist_ok=True)
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name or None,
                                    dir=wandb_dir(args), config=config, settings=wandb.Settings(quiet=True))

    def scalars(self, values: dict, step: int) -> None:
        """``values``: name -> number, already named ``train/...`` or ``valid/...``; non-finite ones are dropped."""
        finite = {k: float(v) for k, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tensorboard is not None:
            for k, v in finite.items():
                self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(finite, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
