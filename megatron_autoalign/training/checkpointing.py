"""Training checkpoints (torch_dist): save, exact resume, and weights-only starts.

Layout (Megatron-LM's): ``SAVE/iter_0000042/`` written by ``dist_checkpointing.save`` with
``model`` (``model0``.. with virtual PP), ``optimizer``, ``opt_param_scheduler``, per-rank
``rng_state`` and the common ``train_state`` (iteration, consumed samples, skipped steps) and ``args``;
then ``SAVE/latest_checkpointed_iteration.txt``, written LAST and atomically, so a crash mid-save leaves
the tracker pointing at the previous complete checkpoint.

``--ckpt-format torch`` writes Megatron-LM's legacy layout instead (``legacy_checkpoint.py``); loading
detects the format of the iteration folder.

Loading: a tracker holding ``release`` (a converted checkpoint) or ``--finetune`` loads weights only;
an ``iter_N`` tracker restores everything, so a resumed run is bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import shutil

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_autoalign.checkpoint import iteration_dir, load_megatron_checkpoint_weights, write_tracker
from megatron_autoalign.checkpoint.layout import CHECKPOINT_VERSION, TRACKER, copy_hf_side_files

from .legacy_checkpoint import is_legacy, load_legacy, save_legacy
from .resume_checks import check_resumable, check_same_data, prune_checkpoints, resume_iteration


# Megatron-LM's default layout of distributed-optimizer state: resumable at any TP/PP with the same DP
# size (megatron-core 0.16's 'fully_sharded_model_space' default relies on flattened ranges it no longer saves).
OPTIM_METADATA = {"distrib_optim_sharding_type": "dp_reshardable", "chained_optim_avoid_prefix": True}
# Stored with the checkpoint (dist_checkpointing's content_metadata), as Megatron-LM does: its loader reads
# the optimizer's sharding type from here (absent, it would assume another layout).
CONTENT_METADATA = dict(OPTIM_METADATA, singleton_local_shards=False)


def _names(chunks) -> list[str]:
    return ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]


# RNG state as Megatron-LM writes it (megatron/training/checkpointing.py, core_r0.16.x, get_rng_state):
# one ShardedObject "rng_state" of global shape (PP, TP) holding a list of per-DP-rank states with these
# keys, so upstream's loader finds the key it asks for. Megatron-LM keeps only DP rank 0's state unless
# --data-parallel-random-init; this list holds every DP rank's (upstream without that flag reads entry 0).
def _rng_state() -> dict:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    state = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    if "cuda_rng_state" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


def _rng_sharded_object(states: list) -> ShardedObject:
    from megatron.core import parallel_state as ps

    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", states, (pp, tp),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def _dp_rng_states() -> list:
    """Every DP(+CP) rank's RNG state, in DP rank order (the same list on each rank of the DP group)."""
    from megatron.core import parallel_state as ps

    group = ps.get_data_parallel_group(with_context_parallel=True)
    states = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, _rng_state(), group=group)
    return states


def _state_dict(chunks, optimizer, scheduler, with_optim: bool, is_loading: bool) -> dict:
    from megatron.core import parallel_state as ps

    from megatron_autoalign.checkpoint.torch_dist import add_te_extra_state

    # The bare GPTModels (DDP's wrapper would prefix the dict keys with "module."); same parameters.
    sd = {n: _unwrap(c).sharded_state_dict() for n, c in zip(_names(chunks), chunks)}
    if with_optim:
        # The optimizer maps its states onto the model's sharded tensors (all chunks).
        sd["optimizer"] = optimizer.sharded_state_dict(
            {n: sd[n] for n in _names(chunks)}, is_loading=is_loading, metadata=OPTIM_METADATA)
        sd["opt_param_scheduler"] = scheduler.state_dict()
    if not is_loading:  # what a Transformer Engine model also asks for (written once: TP 0, DP 0)
        main = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank(with_context_parallel=True) == 0
        for n in _names(chunks):
            add_te_extra_state(sd[n], replica_id=0 if main else 1)
    # Loading fills the template's list with the saved one (only restored when the layout is unchanged).
    sd["rng_state"] = _rng_sharded_object(_dp_rng_states() if not is_loading else [])
    return sd


def save_checkpoint(save_dir: str, iteration: int, chunks, optimizer, scheduler, train_state: dict, cfg,
                    with_optim=True) -> str:
    """Save ``iter_{iteration}`` under ``save_dir`` and then point the tracker at it (``cfg``: the RunConfig,
    saved flat under ``args`` like Megatron-LM's)."""
    path = iteration_dir(save_dir, iteration)
    if dist.get_rank() == 0:
        os.makedirs(save_dir, exist_ok=True)
        if os.path.isdir(path):  # a partial save of a crashed run (the tracker never pointed here)
            shutil.rmtree(path)
        os.makedirs(path)
    dist.barrier()
    state = dict(train_state, iteration=iteration, world_size=dist.get_world_size(), layout=_layout())
    # What Megatron-LM's loader reads at the top level (see checkpoint/megatron_args.py).
    args = _megatron_lm_args(cfg, train_state, iteration)
    if cfg.checkpoint.ckpt_format == "torch":  # Megatron-LM's legacy layout (legacy_checkpoint.py)
        save_legacy(path, _names(chunks), [_unwrap(c) for c in chunks], optimizer, scheduler, state, args,
                    _rng_state(), with_optim)
    else:
        sd = _state_dict(chunks, optimizer, scheduler, with_optim, is_loading=False)
        sd["train_state"], sd["args"] = state, args
        sd["iteration"] = iteration
        sd["checkpoint_version"] = CHECKPOINT_VERSION
        dist_checkpointing.save(sd, path, content_metadata=CONTENT_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        copy_model_files(cfg.model, save_dir)
        write_tracker(save_dir, iteration)
        keep = cfg.checkpoint.keep_last_checkpoints
        if keep:
            deleted = prune_checkpoints(save_dir, keep)
            if deleted:
                print(f"deleted older checkpoints (--keep-last-checkpoints {keep}): "
                      f"iterations {', '.join(map(str, deleted))}", flush=True)
    dist.barrier()
    return path


def _layout() -> list[int]:
    """(PP, TP, DP with CP): the RNG states are per rank of this layout."""
    from megatron.core import parallel_state as ps

    return [ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
            ps.get_data_parallel_world_size(with_context_parallel=True)]


def _megatron_lm_args(cfg, train_state: dict, iteration: int):
    """Megatron-LM's args namespace for this run: the model's fields from its HF config, the run's own
    flags (``cfg.flat()``: already Megatron-LM's names), layout and progress."""
    from megatron_autoalign.checkpoint.megatron_args import megatron_lm_args
    from megatron_autoalign.models import load_hf_config
    from megatron_autoalign.models.builder import resolve_transformer_impl

    # None means "not given" to Megatron-LM's loader too; ckpt_format is passed on its own
    flags = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.flat().items()
             if isinstance(v, (int, float, str, bool, list, tuple)) and k != "ckpt_format"}
    pp, tp, dp = _layout()
    flags.pop("transformer_impl", None)  # "auto" here; the namespace records what was built
    flags.update(iteration=iteration, world_size=dist.get_world_size(), data_parallel_size=dp,
                 consumed_train_samples=train_state.get("consumed_samples", 0),
                 no_save_optim=bool(cfg.checkpoint.no_save_optim), no_save_rng=False)
    return megatron_lm_args(load_hf_config(cfg.model.hf_config), tp, pp, cfg.model.params_dtype,
                            resolve_transformer_impl(cfg.model.transformer_impl),
                            ckpt_format=cfg.checkpoint.ckpt_format, extra=flags)


def copy_model_files(model_cfg, save_dir: str) -> None:
    """config.json and tokenizer files next to our checkpoints, as the converter puts them next to its
    own: the next step (DPO from an SFT run, Megatron -> HF) then finds them without extra flags."""
    for src in (model_cfg.tokenizer, model_cfg.hf_config):  # config.json last, so the model's own wins
        if not src:
            continue
        src_dir = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
        if os.path.abspath(src_dir) != os.path.abspath(save_dir):
            copy_hf_side_files(src_dir, save_dir)


def has_resumable_checkpoint(load_dir: str | None) -> bool:
    return bool(load_dir) and os.path.isfile(os.path.join(load_dir, TRACKER))


@torch.no_grad()  # fp32 main params are views of the model's leaf parameters: copy into them without autograd
def load_checkpoint(load_dir: str, chunks, optimizer, scheduler, args, data_hash: str | None = None,
                    data_path: str = "") -> dict | None:
    """Restore from ``load_dir`` (its latest iteration, or --ckpt-step's); returns the train_state for an
    exact resume, None for weights-only. ``args``: the run's CheckpointConfig (--finetune, --no-load-optim,
    --no-load-rng, --ckpt-step, --allow-data-change). ``data_hash``: the training data's (``data_path``),
    checked against the one the checkpoint was trained on."""
    it = resume_iteration(load_dir, args.ckpt_step)
    if it == "release" or args.finetune:
        load_megatron_checkpoint_weights([_unwrap(c) for c in chunks], load_dir)
        return None
    if is_legacy(iteration_dir(load_dir, it)):
        return _load_legacy_checkpoint(iteration_dir(load_dir, it), chunks, optimizer, scheduler, args, data_hash,
                                       data_path)
    path = check_resumable(load_dir, it)
    common = dist_checkpointing.load_common_state_dict(path)
    train_state = common["train_state"]
    check_same_data(train_state, data_hash, args.allow_data_change, data_path, path)
    with_optim = not args.no_load_optim and "opt_param_scheduler" in common
    if with_optim:
        _ensure_adam_state(optimizer)
    sd = _state_dict(chunks, optimizer, scheduler, with_optim, is_loading=True)
    if args.no_load_rng or train_state.get("layout") != _layout():
        sd.pop("rng_state")
    loaded = dist_checkpointing.load(sd, path)
    for n, c in zip(_names(chunks), chunks):
        _unwrap(c).load_state_dict(loaded[n])
    if with_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
        _restore_adam_steps(optimizer, scheduler.num_steps)
    if "rng_state" in loaded:
        from megatron.core import parallel_state as ps

        _set_rng_state(loaded["rng_state"][ps.get_data_parallel_rank(with_context_parallel=True)])
    return train_state


def _load_legacy_checkpoint(path: str, chunks, optimizer, scheduler, args, data_hash, data_path) -> dict:
    train_state, rng = load_legacy(path, _names(chunks), [_unwrap(c) for c in chunks], optimizer, scheduler,
                                   load_optim=not args.no_load_optim)
    check_same_data(train_state, data_hash, args.allow_data_change, data_path, path)
    if not args.no_load_optim:
        _restore_adam_steps(optimizer, scheduler.num_steps)
    if rng is not None and not args.no_load_rng and train_state.get("world_size") == dist.get_world_size():
        _set_rng_state(rng)
    return train_state


def _ensure_adam_state(optimizer) -> None:
    """A fresh torch Adam has no per-parameter state, but megatron's distributed optimizer builds its
    loading template from the state dict (and needs 'step'): give every parameter zero state first;
    the checkpoint then overwrites all of it."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                if len(inner.state[p]) == 0:
                    inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p.data),
                                      "exp_avg_sq": torch.zeros_like(p.data)}


def _restore_adam_steps(optimizer, steps: int) -> None:
    """Give every parameter its own Adam step counter = the number of applied updates.

    Without Apex/TE, megatron-core 0.16's distributed optimizer restores 'step' as ONE tensor shared by
    all parameters (and from a field it does not fill reliably); torch's Adam then increments that
    shared counter once per parameter, corrupting bias correction after a resume. The scheduler counts
    exactly the applied (non-skipped) updates, which is what Adam's step is.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in opt.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(float(steps), dtype=torch.float32)


def _unwrap(chunk):
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk
