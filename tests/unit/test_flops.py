"""FLOP counts for MFU (models/flops.py) against torch's own FLOP counter on an HF Qwen2 step, and the
per-micro-batch work counts the collate functions record for them."""

import numpy as np
import pytest
import torch

from megatron_autoalign.models.flops import batch_training_flops, computed_training_flops, training_flops_per_token
from megatron_autoalign.training.sft_batch import collate_sbhd, collate_thd

TINY = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
        "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
        "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256}


def test_matches_torch_flop_counter_on_hf_forward_backward():
    """An HF eager Qwen2 forward + backward on one sequence of L tokens: torch's FlopCounterMode counts every
    matmul. Eager attention computes all L^2 (query, key) pairs where the formula counts the causal L^2/2, so
    the counter exceeds it by exactly 3 * layers * (4 * q * L^2 / 2)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**{k: v for k, v in TINY.items() if k != "architectures"})
    cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(cfg)
    L = 24
    ids = torch.randint(0, 300, (1, L))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    q = TINY["num_attention_heads"] * (TINY["hidden_size"] // TINY["num_attention_heads"])
    masked_half = 3 * TINY["num_hidden_layers"] * 4 * q * L * L / 2
    assert counter.get_total_flops() == pytest.approx(computed_training_flops(TINY, [L], L) + masked_half, rel=1e-12)


def test_full_row_formula_is_the_one_document_case():
    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES

    s = QWEN2_5_SIZES["1.5B"]
    cfg = {"num_hidden_layers": s.num_layers, "hidden_size": s.hidden_size, "intermediate_size": s.ffn_hidden_size,
           "num_attention_heads": s.num_attention_heads, "num_key_value_heads": s.num_key_value_heads,
           "vocab_size": s.vocab_size, "tie_word_embeddings": True}
    h, kv, d, ffn, V, seq = 1536, 2, 128, 8960, 151936, 8192  # ../shared/GPU.md's formula, written out
    gpu_md = 3 * (28 * (2 * h * (h + 2 * kv * d) + 2 * h * h + 6 * h * ffn + 2 * seq * h) + 2 * h * V)
    assert training_flops_per_token(cfg, seq) == pytest.approx(gpu_md, rel=1e-12)
    # eight documents of 1024 tokens and 6,000 of the 8192 tokens projected: less attention and vocabulary work
    packed = computed_training_flops(cfg, [1024] * 8, 6000) / seq
    attention_saved = 3 * 28 * 4 * h * (seq * seq / 2 - 8 * 1024 * 1024 / 2) / seq
    vocab_saved = 3 * 2 * h * V * (seq - 6000) / seq
    assert packed == pytest.approx(gpu_md - attention_saved - vocab_saved, rel=1e-9)


def _row(ids, labels, lens):
    return {"input_ids": np.array(ids), "labels": np.array(labels), "doc_lens": np.array(lens)}


@pytest.mark.parametrize("cp", [1, 2])
def test_collate_records_documents_and_projected_tokens(cp):
    rows = [_row([1, 2, 3, 4, 5], [-100, 2, 3, -100, 5], [3, 2]), _row([6, 7, 8], [6, 7, 8], [3])]
    # in-document targets: doc [1,2,3] -> 2,3 ; doc [4,5] -> 5 ; doc [6,7,8] -> 7,8  => 5 projected tokens
    for rank in range(cp):
        b = collate_thd(rows, capacity=12, cp_size=cp, cp_rank=rank, pad_id=0)
        assert b["doc_lens"] == (3, 2, 3) and b["num_projected"] == 5  # padding documents not counted
        s = collate_sbhd([_row([1, 2, 3], [-100, 2, 3], [3]), _row([4, 5, 6, 7], [4, 5, 6, 7], [4])], 8, cp, rank, 0)
        assert s["doc_lens"] == (3, 4) and s["num_projected"] == 2 + 3  # targets [2, 3] and [5, 6, 7]
    assert batch_training_flops(TINY, b) == computed_training_flops(TINY, [3, 2, 3], 5)
