"""Process-group set-up: NCCL when CUDA is present, gloo (plus the CPU compatibility layer) otherwise.
The CPU layer lives exactly as long as the process groups: ``init_distributed`` enables it on a machine
without CUDA, ``destroy_distributed`` disables it.

Works under torchrun (RANK/WORLD_SIZE/LOCAL_RANK from the environment) and as a plain single process.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this rank computes on."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> None:
    """Initialise torch.distributed and megatron-core's model-parallel groups, then seed RNGs."""
    from megatron.core import parallel_state

    if not torch.cuda.is_available():
        from . import cpu_compat

        cpu_compat.enable()

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Under torchrun the rendezvous comes from the environment; a plain process gets a private
        # one-rank group (nothing is written to os.environ, so child processes start clean).
        under_launcher = "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ
        dist.init_process_group(
            backend="nccl" if torch.cuda.is_available() else "gloo",
            init_method=None if under_launcher else f"tcp://127.0.0.1:{_free_port()}",
            rank=int(os.environ.get("RANK", "0")) if under_launcher else 0,
            world_size=int(os.environ["WORLD_SIZE"]) if under_launcher else 1,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )

    world = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size * context_parallel_size
    if world % model_parallel:
        raise SystemExit(
            f"error: world size {world} is not divisible by TP({tensor_model_parallel_size}) x "
            f"PP({pipeline_model_parallel_size}) x CP({context_parallel_size}) = {model_parallel}"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
    )
    set_seed(seed)


def set_seed(seed: int) -> None:
    """Same seed on every rank for data order; megatron's tracker gives TP ranks distinct init streams."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Tear down the process groups and the CPU layer ``init_distributed`` enabled."""
    from megatron.core import parallel_state

    from . import cpu_compat

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    cpu_compat.disable()


def is_last_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1


def print_rank_0(*args, **kwargs) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, **kwargs, flush=True)
