"""Shared by the DPO tests: a small-vocabulary tiny Qwen2 pair (policy, reference), converted to Megatron,
synthetic preference data, and the independent HF ground truth (per-sequence forward, log_softmax, gather).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import torch

VOCAB = 512  # small, so CPU tests spend their time in the transformer rather than a 152k-way softmax


def tiny_qwen2_small_vocab(out_dir: str, seed: int, num_layers: int = 4) -> str:
    """make_tiny_qwen2's shapes (GQA 4/2 heads, tied) with a 512-token vocabulary."""
    from megatron_autoalign.testing.tiny_models import make_tiny_qwen2

    return make_tiny_qwen2(out_dir, tied=True, num_layers=num_layers, vocab_size=VOCAB, seed=seed)


def convert(hf_dir: str, mg_dir: str) -> str:
    """HF -> Megatron torch_dist (fp32), cached: the tracker is written last, so without it start over."""
    if not os.path.exists(os.path.join(mg_dir, "latest_checkpointed_iteration.txt")):
        shutil.rmtree(mg_dir, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", hf_dir,
                        "--save-path", mg_dir, "--precision", "fp32", "--no-progress"], check=True,
                       capture_output=True)
    return mg_dir


def hf_sequence_logps(hf_dir: str, pairs: list[tuple]) -> torch.Tensor:
    """[P, 2] float64: sum over trained tokens of log p(token | prefix), each sequence run ALONE through
    transformers' Qwen2ForCausalLM (fp32), log_softmax, gather. Label j (aligned with input j) is
    predicted by the logits at position j-1."""
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    out = torch.zeros(len(pairs), 2, dtype=torch.float64)
    with torch.no_grad():
        for k, (ci, cl, ri, rl) in enumerate(pairs):
            for side, (ids, labels) in enumerate(((ci, cl), (ri, rl))):
                ids, labels = torch.as_tensor(ids).long(), torch.as_tensor(labels).long()
                logp = torch.log_softmax(model(ids[None]).logits[0].double(), dim=-1)
                target = labels[1:]
                keep = target != -100
                out[k, side] = logp[:-1][keep].gather(-1, target[keep][:, None]).sum()
    return out


def trained_counts(pairs: list[tuple]) -> torch.Tensor:
    return torch.tensor([[int((torch.as_tensor(lab)[1:] != -100).sum()) for lab in (p[1], p[3])] for p in pairs],
                        dtype=torch.float64)
