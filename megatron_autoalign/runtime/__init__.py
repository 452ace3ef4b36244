"""Distributed start-up, the CPU compatibility layer for megatron-core, and the registry of every patch this
project applies to torch / megatron-core (``patches.py``)."""

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
