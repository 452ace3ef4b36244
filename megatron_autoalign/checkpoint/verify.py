"""Logits parity: the HF model and the Megatron model (TP1PP1, this process) on the same tokens.

    python -m megatron_autoalign.checkpoint.verify --hf-path HF_DIR --megatron-path MG_DIR [--dtype fp32]

Prints the max-abs difference and the cosine similarity of the two logits tensors. On CPU in fp32 a
correct conversion gives max-abs around 1e-6; beyond ``--tolerance`` (1e-3) the command exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .errors import CheckpointError, run_command
from .layout import DTYPES


def sample_tokens(vocab: int, batch: int = 2, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 151643), (batch, seq_len), generator=g)


def hf_logits(hf_dir: str, tokens: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="eager").to(device).eval()
    with torch.no_grad():
        out = model(input_ids=tokens.to(device)).logits.float().cpu()
    del model
    return out


def megatron_logits(mg_dir: str, hf_config: dict, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Build the TP1PP1 model on this process's device, load the checkpoint, run a forward pass."""
    from ..models import build_gpt_model, transformer_config_from_hf
    from ..runtime import device
    from . import load_megatron_checkpoint_weights
    from .torch_dist import ensure_process_group

    ensure_process_group()
    config = transformer_config_from_hf(hf_config, dtype, perform_initialization=False)
    model = build_gpt_model(hf_config, config, pre_process=True, post_process=True).to(device())
    load_megatron_checkpoint_weights([model], mg_dir)
    model.eval()
    ids = tokens.to(device())
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    with torch.no_grad():
        out = model(ids, pos, None).float().cpu()
    del model
    return out


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    max_abs = (a - b).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
    return max_abs, cosine


def verify(hf_dir: str, mg_dir: str, dtype: torch.dtype = torch.float32, seq_len: int = 32) -> tuple[float, float]:
    from ..models.hf_config import load_hf_config
    from ..runtime import device

    from .layout import resolve_checkpoint
    from .recorded_config import check_hf_config_matches

    hf_config = load_hf_config(hf_dir)
    # Both models are built from this config: one that disagrees with the checkpoint would agree with itself.
    check_hf_config_matches(hf_config, os.path.join(hf_dir, "config.json"), *resolve_checkpoint(mg_dir))
    tokens = sample_tokens(hf_config["vocab_size"], seq_len=seq_len)
    mg = megatron_logits(mg_dir, hf_config, tokens, dtype)
    hf = hf_logits(hf_dir, tokens, dtype, device())
    if hf.shape != mg.shape:
        raise CheckpointError(f"{mg_dir}: Megatron logits {tuple(mg.shape)} vs HF {tuple(hf.shape)}")
    max_abs, cosine = compare(hf, mg)
    print(f"verify: logits max-abs diff {max_abs:.3e}, cosine {cosine:.8f} "
          f"({str(dtype).replace('torch.', '')}, {tokens.shape[0]}x{tokens.shape[1]} tokens, {device()})", flush=True)
    return max_abs, cosine


def check_within_tolerance(max_abs: float, cosine: float, tolerance: float, where: str) -> None:
    """A conversion whose logits differ beyond ``tolerance`` is an error, not a printed number."""
    if not (max_abs <= tolerance and cosine > 1 - tolerance):  # also catches NaN
        raise CheckpointError(f"{where}: verify failed: logits max-abs diff {max_abs:.3e} > tolerance {tolerance:.0e} "
                              f"(cosine {cosine:.8f}); the converted model does not compute what the HF model computes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_autoalign.checkpoint.verify", description=__doc__.split("\n")[0])
    p.add_argument("--hf-path", required=True, help="HF model directory")
    p.add_argument("--megatron-path", required=True, help="Megatron checkpoint (root with tracker or an iteration folder)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="compute dtype of both models")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--tolerance", type=float, default=1e-3, help="exit 2 when the logits max-abs diff exceeds this")
    args = p.parse_args(argv)

    def body():
        result = verify(args.hf_path, args.megatron_path, DTYPES[args.dtype], args.seq_len)
        check_within_tolerance(*result, args.tolerance, where=args.megatron_path)

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
