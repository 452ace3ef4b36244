"""The start-up every run entry point shares (the trainer, the DPO reference scoring pass): flags -> frozen
config -> HF config and the checks against it -> distributed groups; and the one way an entry point ends
(one-line errors, exit code 2 for bad configuration, data or checkpoints)."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from megatron_autoalign.quiet import accelerator_line
from megatron_autoalign.runtime import init_distributed, print_rank_0

from .arguments import ArgumentError
from .config import RunConfig, for_model, parse_run_config

EXIT_CONFIG_ERROR = 2


def start(cfg: RunConfig) -> tuple[RunConfig, dict]:
    """(config with the model's derived values, HF config) after the process groups are up."""
    from megatron_autoalign.models import load_hf_config

    hf_cfg = load_hf_config(cfg.model.hf_config)
    cfg = for_model(cfg, hf_cfg)
    p = cfg.parallel
    init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size,
                     p.virtual_pipeline_model_parallel_size, cfg.training.seed)
    if accelerator_line():
        print_rank_0(accelerator_line())
    print_warnings(cfg)
    return cfg, hf_cfg


def parse_and_start(task_cls, argv=None) -> tuple[RunConfig, dict]:
    return start(parse_run_config(argv, task_cls=task_cls))


def print_warnings(cfg: RunConfig, already: RunConfig | None = None) -> None:
    """The config's warnings on rank 0 (those not in ``already``, a config printed before)."""
    for w in cfg.warnings[len(already.warnings) if already else 0:]:
        print_rank_0(f"warning: {w}")


def run_entry_point(body) -> int:
    """Run ``body()`` (returns an exit code or None): a configuration, data or checkpoint error is one line
    on stderr (rank 0) and exit code 2 (``MA_DEBUG=1`` re-raises it); the process groups are torn down
    either way."""
    from megatron_autoalign.checkpoint import CheckpointError
    from megatron_autoalign.models import ConfigError
    from megatron_autoalign.runtime import destroy_distributed

    try:
        return body() or 0
    except (ArgumentError, ConfigError, CheckpointError, ValueError, FileNotFoundError) as e:
        if os.environ.get("MA_DEBUG"):
            raise
        # once: rank 0 (RANK before the process group exists, e.g. a bad flag)
        if (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    finally:
        destroy_distributed()
