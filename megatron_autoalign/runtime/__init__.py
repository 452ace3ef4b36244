"""Distributed start-up and the CPU compatibility layer for megatron-core."""

from .distributed import (
    destroy_distributed,
    device,
    init_distributed,
    is_last_rank,
    print_rank_0,
    set_seed,
)

__all__ = [
    "destroy_distributed",
    "device",
    "init_distributed",
    "is_last_rank",
    "print_rank_0",
    "set_seed",
]
