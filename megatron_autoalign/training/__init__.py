"""Training: arguments, the one loop shared by SFT and DPO (``loop.py``; what it builds from the arguments:
``model_and_optimizer.py``; its log: ``step_log.py``), the task interface (``task.py``), checkpoints, and
the SFT task. Entry points: ``python -m megatron_autoalign.training.sft``
and ``python -m megatron_autoalign.training.train --task sft|dpo``."""

from .task import Task, TaskContext

__all__ = ["Task", "TaskContext"]
