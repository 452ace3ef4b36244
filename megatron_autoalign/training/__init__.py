"""Training: the flags (``arguments.py``) and the frozen run config built from them (``config.py``), the
start-up shared by every run entry point (``startup.py``), the one loop shared by SFT and DPO (``loop.py``;
what it builds from the config: ``model_and_optimizer.py``; its log: ``step_log.py``), the task interface
(``task.py``), checkpoints, and the SFT task. Entry points: ``python -m megatron_autoalign.training.sft``
and ``python -m megatron_autoalign.training.train --task sft|dpo``."""

__all__ = ["Task", "TaskContext"]


def __getattr__(name):  # imported on first use: `--help` and the flag check must not wait for torch
    if name in __all__:
        from . import task

        return getattr(task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
