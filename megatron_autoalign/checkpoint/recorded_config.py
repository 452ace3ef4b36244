"""Megatron -> HF refuses an HF config that disagrees with what the checkpoint itself records.

The HF config (``--hf-ckpt-path``) decides the exported ``config.json``; one with matching shapes but
another ``rope_theta``, ``rms_norm_eps`` or vocabulary would produce a model that loads and computes
something else (and ``--verify`` would agree with it, reading the same config). Every Megatron
checkpoint carries its ``args`` (Megatron-LM's names: ours, Megatron-LM's and Pai-Megatron-Patch's);
each field recorded there is compared with the HF config. Fields a checkpoint does not record are
not compared.
"""

from __future__ import annotations

import glob
import math
import os

import torch

from .errors import CheckpointError


def recorded_args(iter_dir: str, fmt: str):
    """The ``args`` saved in a checkpoint (a Namespace, or a dict in older training checkpoints), or None."""
    if fmt == "torch_dist":
        from megatron.core import dist_checkpointing

        common = dist_checkpointing.load_common_state_dict(iter_dir)
    else:
        files = sorted(glob.glob(os.path.join(iter_dir, "mp_rank_*", "model_optim_rng.pt")))
        common = torch.load(files[0], map_location="cpu", mmap=True, weights_only=False) if files else {}
    args = common.get("args") if isinstance(common, dict) else None
    return vars(args) if args is not None and not isinstance(args, dict) else args


def _hf_values(hf_config: dict) -> dict:
    """Megatron-LM arg name -> the value this HF config implies."""
    from ..models.hf_config import head_dim, rope_theta, size_of

    s = size_of(hf_config)
    return {
        "num_layers": s.num_layers, "hidden_size": s.hidden_size, "ffn_hidden_size": s.ffn_hidden_size,
        "num_attention_heads": s.num_attention_heads, "num_query_groups": s.num_key_value_heads,
        "kv_channels": head_dim(hf_config), "padded_vocab_size": s.vocab_size,
        "untie_embeddings_and_output_weights": not s.tie_word_embeddings,
        "rotary_base": rope_theta(hf_config), "norm_epsilon": float(hf_config.get("rms_norm_eps", 1e-6)),
    }


# Megatron-LM arg -> HF config.json key, for the message.
_HF_NAMES = {
    "num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads", "num_query_groups": "num_key_value_heads",
    "kv_channels": "head_dim", "padded_vocab_size": "vocab_size",
    "untie_embeddings_and_output_weights": "tie_word_embeddings (negated)", "rotary_base": "rope_theta",
    "norm_epsilon": "rms_norm_eps",
}


def check_hf_config_matches(hf_config: dict, config_file: str, iter_dir: str, fmt: str) -> None:
    """One-line CheckpointError listing every field where the HF config and the checkpoint's args differ."""
    args = recorded_args(iter_dir, fmt) or {}
    if not args.get("group_query_attention", True) and "num_query_groups" in args:
        args = dict(args, num_query_groups=args.get("num_attention_heads"))  # MHA checkpoints record None
    if "norm_epsilon" not in args and "layernorm_epsilon" in args:
        args = dict(args, norm_epsilon=args["layernorm_epsilon"])  # Megatron-LM core_v0.16 stores it under this name
    diffs = []
    for name, hf_value in _hf_values(hf_config).items():
        value = args.get(name)
        if value is None:
            continue
        same = math.isclose(float(value), float(hf_value), rel_tol=1e-9) if isinstance(hf_value, float) else value == hf_value
        if not same:
            diffs.append(f"{_HF_NAMES[name]} {hf_value} vs {name} {value}")
    if diffs:
        raise CheckpointError(
            f"{config_file}: does not describe the checkpoint {iter_dir} ({'; '.join(diffs)}); "
            "pass --hf-ckpt-path with the HF model the checkpoint was converted from")
