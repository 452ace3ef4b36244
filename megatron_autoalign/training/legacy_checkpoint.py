"""Training checkpoints in Megatron-LM's legacy ``torch`` format (``--ckpt-format torch``).

Layout, as Megatron-LM writes it: ``iter_N/mp_rank_TT[_PPP]/model_optim_rng.pt`` per tensor/pipeline rank,
written by data-parallel rank 0, holding ``model`` (``model0``.. with virtual PP: each chunk's own state
dict), ``optimizer``, ``opt_param_scheduler``, ``rng_state``, ``iteration``, ``checkpoint_version`` and
``args``; with the distributed optimizer its sharded state (fp32 main weights, Adam moments) is gathered
into ``distrib_optim.pt`` beside it (``save_parameter_state``). This project adds ``train_state``
(consumed samples, skipped steps) for an exact resume. Unlike ``torch_dist``, it resumes only at the same
TP/PP (and DP size with the distributed optimizer); the converter reads it at any.
"""

from __future__ import annotations

import glob
import os

import torch
import torch.distributed as dist

MODEL_FILE = "model_optim_rng.pt"
OPTIM_FILE = "distrib_optim.pt"


def is_legacy(iter_dir: str) -> bool:
    return bool(glob.glob(os.path.join(iter_dir, "mp_rank_*", MODEL_FILE)))


def _rank_dir(iter_dir: str) -> str:
    from megatron.core import parallel_state as ps

    from megatron_autoalign.checkpoint.legacy import rank_dir

    return rank_dir(iter_dir, ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                    ps.get_pipeline_model_parallel_world_size())


def _distributed(optimizer) -> bool:
    """megatron-core's distributed optimizer (alone or chained): its state is sharded over data parallel."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(o, DistributedOptimizer) for o in getattr(optimizer, "chained_optimizers", [optimizer]))


def _writes_model() -> bool:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank(with_context_parallel=True) == 0


def save_legacy(iter_dir: str, names: list[str], chunks, optimizer, scheduler, train_state: dict, args,
                rng_state: dict, with_optim: bool) -> None:
    """Every rank calls this (the distributed optimizer gathers its shards over data parallel)."""
    rank_dir = _rank_dir(iter_dir)
    if _writes_model():
        os.makedirs(rank_dir, exist_ok=True)
    dist.barrier()
    sd = {n: c.state_dict_for_save_checkpoint() for n, c in zip(names, chunks)}
    sd.update(checkpoint_version=3.0, iteration=train_state["iteration"], train_state=train_state, args=args,
              rng_state=[rng_state])
    if with_optim:
        sd["optimizer"] = optimizer.state_dict()
        sd["opt_param_scheduler"] = scheduler.state_dict()
        if _distributed(optimizer):
            optimizer.save_parameter_state(os.path.join(rank_dir, OPTIM_FILE))  # collective; DP rank 0 writes
    if _writes_model():
        torch.save(sd, os.path.join(rank_dir, MODEL_FILE))


def load_legacy(iter_dir: str, names: list[str], chunks, optimizer, scheduler,
                load_optim: bool) -> tuple[dict, dict | None]:
    """Restore this rank's model (and optimizer) state; returns (train_state, rng_state or None)."""
    rank_dir = _rank_dir(iter_dir)
    sd = torch.load(os.path.join(rank_dir, MODEL_FILE), map_location="cpu", weights_only=False)
    for n, c in zip(names, chunks):
        c.load_state_dict(sd[n])
    if load_optim and "optimizer" in sd:
        optimizer.load_state_dict(sd["optimizer"])
        if _distributed(optimizer):
            _load_parameter_state(optimizer, os.path.join(rank_dir, OPTIM_FILE))
        scheduler.load_state_dict(sd["opt_param_scheduler"])
    rng = sd.get("rng_state")
    return sd["train_state"], (rng[0] if rng else None)


def _load_parameter_state(optimizer, filename: str) -> None:
    """megatron-core's file holds each shard's param, exp_avg and exp_avg_sq; torch's Adam (no apex/TE) also
    keeps a per-parameter ``step``, which the loader would look for in the file. Set it aside; the caller
    then sets it to the number of applied updates (``checkpointing._restore_adam_steps``)."""
    states = [st for o in getattr(optimizer, "chained_optimizers", [optimizer]) for st in o.optimizer.state.values()]
    with_step = [st for st in states if st.pop("step", None) is not None]
    optimizer.load_parameter_state(filename)
    for st in with_step:
        st["step"] = torch.tensor(0.0)
