"""Training FLOPs of a Qwen2 model, for TFLOP/s and MFU reporting (one formula for logs and benches)."""

from __future__ import annotations

from .qwen2 import head_dim, size_of

# Dense bf16 peak of the cards we report against (vendor numbers, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def training_flops_per_token(hf_config: dict, seq_len: int) -> float:
    """Forward + backward (3x forward) matmul FLOPs per token; causal attention over the whole row of
    ``seq_len`` tokens, counted at half (only the visible keys). Packed rows of shorter documents do less
    attention work than this counts.

    3 * [layers * (2h(h + 2*kv*d) + 2h^2 + 6h*ffn + 2*s*h) + 2h*vocab]; the same formula as ../shared/GPU.md.
    """
    s = size_of(hf_config)
    h, d = s.hidden_size, head_dim(hf_config)
    per_layer = (
        2 * h * (h + 2 * s.num_key_value_heads * d)  # qkv
        + 2 * h * h  # output projection
        + 6 * h * s.ffn_hidden_size  # gate, up, down
        + 2 * seq_len * h  # attention scores and values
    )
    return 3.0 * (s.num_layers * per_layer + 2 * h * s.vocab_size)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None
