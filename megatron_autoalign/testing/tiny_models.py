"""Tiny random Qwen2 and Qwen3 HF checkpoints (made with transformers; no hub access needed)."""

from __future__ import annotations

import os

import torch

TINY_VOCAB = 151936  # the real Qwen2.5 padded vocabulary, so the real tokenizer fits


def make_tiny_qwen2(
    out_dir: str,
    tied: bool = True,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = TINY_VOCAB,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    max_shard_size: str | None = None,
) -> str:
    """Save a random Qwen2ForCausalLM to ``out_dir`` (idempotent) and return the path."""
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        **_shared_config(tied, vocab_size),
    )
    torch.manual_seed(seed)
    return _save_random(Qwen2ForCausalLM(config).to(dtype), out_dir, max_shard_size)


def make_tiny_qwen3(
    out_dir: str,
    tied: bool = True,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    vocab_size: int = TINY_VOCAB,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> str:
    """Save a random Qwen3ForCausalLM to ``out_dir`` (idempotent) and return the path.

    ``head_dim`` defaults to 32 while hidden_size / heads is 16: a mapping that derived the head width
    from the hidden size could not pass a parity test.
    """
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        attention_bias=False,
        **_shared_config(tied, vocab_size),
    )
    torch.manual_seed(seed)
    return _save_random(Qwen3ForCausalLM(config).to(dtype), out_dir)



def _shared_config(tied: bool, vocab_size: int) -> dict:
    """Config fields both tiny families share: Qwen's rope base, norm epsilon and special ids
    (clamped so that small-vocabulary test models stay valid)."""
    return dict(
        max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        bos_token_id=min(151643, vocab_size - 1), eos_token_id=min(151645, vocab_size - 1),
        pad_token_id=min(151643, vocab_size - 1), use_sliding_window=False,
    )

def _save_random(model, out_dir: str, max_shard_size: str | None = None) -> str:
    # Random non-trivial norms and biases so a wrong mapping of either cannot pass a parity test.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, safe_serialization=True, **kwargs)
    return out_dir


def write_synthetic_qwen2(out_dir: str, num_layers: int, hidden_size: int, intermediate_size: int, num_heads: int,
                          num_kv_heads: int, vocab_size: int, tied: bool, dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0) -> str:
    """A random Qwen2 HF checkpoint of any shape, written tensor by tensor (idempotent; returns the path).

    Unlike ``make_tiny_qwen2`` no model is instantiated, so a billion-parameter checkpoint costs one
    safetensors shard of memory (for conversion benchmarks: memory and time, not numerics).
    """
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    from transformers import Qwen2Config

    from ..checkpoint.safetensors_io import ShardedSafetensorsWriter

    os.makedirs(out_dir, exist_ok=True)
    head_dim = hidden_size // num_heads
    g = torch.Generator().manual_seed(seed)
    writer = ShardedSafetensorsWriter(out_dir, dtype, max_shard_bytes=2 * 10**9)

    def add(name, *shape):
        writer.add(name, (torch.randn(shape, generator=g) * 0.02).to(dtype))

    add("model.embed_tokens.weight", vocab_size, hidden_size)
    for layer in range(num_layers):
        p = f"model.layers.{layer}."
        writer.add(p + "input_layernorm.weight", torch.ones(hidden_size, dtype=dtype))
        writer.add(p + "post_attention_layernorm.weight", torch.ones(hidden_size, dtype=dtype))
        add(p + "self_attn.q_proj.weight", num_heads * head_dim, hidden_size)
        add(p + "self_attn.k_proj.weight", num_kv_heads * head_dim, hidden_size)
        add(p + "self_attn.v_proj.weight", num_kv_heads * head_dim, hidden_size)
        add(p + "self_attn.q_proj.bias", num_heads * head_dim)
        add(p + "self_attn.k_proj.bias", num_kv_heads * head_dim)
        add(p + "self_attn.v_proj.bias", num_kv_heads * head_dim)
        add(p + "self_attn.o_proj.weight", hidden_size, num_heads * head_dim)
        add(p + "mlp.gate_proj.weight", intermediate_size, hidden_size)
        add(p + "mlp.up_proj.weight", intermediate_size, hidden_size)
        add(p + "mlp.down_proj.weight", hidden_size, intermediate_size)
    writer.add("model.norm.weight", torch.ones(hidden_size, dtype=dtype))
    if not tied:
        add("lm_head.weight", vocab_size, hidden_size)
    writer.close()
    Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
                architectures=["Qwen2ForCausalLM"], dtype=str(dtype).replace("torch.", "")).to_json_file(
        os.path.join(out_dir, "config.json"))
    return out_dir
