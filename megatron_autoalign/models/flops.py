"""Training FLOPs of a Qwen2 model, for TFLOP/s and MFU reporting (one place for logs and benches).

Two counts are reported side by side:
- ``training_flops_per_token``: the usual formula, as if every row were one causal document of ``seq_len``
  tokens and every token went through the vocabulary projection (the HF peer does exactly this work);
- ``computed_training_flops``: the FLOPs the step actually does useful work with: causal attention only
  inside each document of a packed row, the vocabulary projection only for the tokens that have a target
  (the fused linear cross entropy projects no others), padding not counted. MFU on this count is the
  honest one for packed rows.

Both: forward + backward = 3 x forward matmul FLOPs; a causal document of L tokens counts L^2/2 visible
(query, key) pairs; recomputation (the linear CE's logits, ``--recompute-swiglu``) is not useful work and
is not counted.
"""

from __future__ import annotations

from typing import Iterable

from .hf_config import head_dim, size_of

# Dense bf16 peak of the cards we report against (vendor numbers, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def computed_training_flops(hf_config: dict, doc_lengths: Iterable[int], projected_tokens: int) -> float:
    """Forward + backward FLOPs over documents of ``doc_lengths`` tokens (each causal on its own), with
    ``projected_tokens`` of them going through the vocabulary projection:

        3 * [ n * layers * (2h(q + 2*kv*d) + 2*q*h + 6h*ffn)      dense layers, every token
              + layers * sum_docs(L^2/2) * 4*q                    scores and values, causal per document
              + projected * 2h*vocab ]                            output projection
    with n = sum of L, h = hidden size, q = heads * head_dim, kv = K/V heads, d = head_dim.
    """
    s = size_of(hf_config)
    h, d = s.hidden_size, head_dim(hf_config)
    q = s.num_attention_heads * d
    dense_per_token = 2 * h * (q + 2 * s.num_key_value_heads * d) + 2 * q * h + 6 * h * s.ffn_hidden_size
    lengths = list(doc_lengths)
    tokens, pairs = sum(lengths), sum(L * L / 2 for L in lengths)
    return 3.0 * (s.num_layers * (tokens * dense_per_token + 4 * q * pairs) + projected_tokens * 2 * h * s.vocab_size)


def training_flops_per_token(hf_config: dict, seq_len: int) -> float:
    """The usual formula per token: one causal document of ``seq_len`` tokens, every token projected.
    For Qwen2 shapes (q = h) this is 3 * [layers * (2h(h + 2*kv*d) + 2h^2 + 6h*ffn + 2*s*h) + 2h*vocab],
    the formula of ../shared/GPU.md. Packed rows of shorter documents do less attention work than this."""
    return computed_training_flops(hf_config, [seq_len], seq_len) / seq_len


def batch_training_flops(hf_config: dict, batch: dict) -> float:
    """``computed_training_flops`` of a collated micro-batch (``doc_lens`` and ``num_projected`` are the
    host-side counts the SFT/DPO collate functions record)."""
    return computed_training_flops(hf_config, batch["doc_lens"], batch["num_projected"])


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None
