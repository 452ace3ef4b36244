"""Experiment trackers: TensorBoard (``--tensorboard-dir``) and Weights & Biases (``--wandb-project``, Megatron-LM's
flag names), fed the same scalars by the step log on the rank that prints it.

W&B is an optional extra (``pip install -e ".[wandb]"``); ``WANDB_MODE=offline`` writes the run under
``--wandb-save-dir`` with no network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import importlib.util
import math
import os


def wandb_missing(wandb_project: str | None) -> str | None:
    """One-line reason --wandb-project cannot work here, or None (checked with the other flags, config.py)."""
    if wandb_project and importlib.util.find_spec("wandb") is None:
        return "--wandb-project needs the wandb package: pip install -e \".[wandb]\" (or drop the flag)"
    return None


def wandb_dir(cfg) -> str:
    """--wandb-save-dir, else Megatron-LM's default: SAVE/wandb (the working directory without --save)."""
    return cfg.logging.wandb_save_dir or os.path.join(cfg.checkpoint.save or ".", "wandb")


class Trackers:
    def __init__(self, cfg):
        """``cfg``: the run config (``config.py``); W&B records its flags by their Megatron-LM names."""
        log = cfg.logging
        self.tensorboard = self.wandb = None
        if log.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log.tensorboard_dir)
        if log.wandb_project:
            import wandb

            os.makedirs(wandb_dir(cfg), exist_ok=True)
            config = {k: v for k, v in cfg.flat().items() if isinstance(v, (int, float, str, bool, type(None)))}
            self.wandb = wandb.init(project=log.wandb_project, name=log.wandb_exp_name or None,
                                    dir=wandb_dir(cfg), config=config, settings=wandb.Settings(quiet=True))

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
