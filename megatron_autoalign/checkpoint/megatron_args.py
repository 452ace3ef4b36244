"""The ``args`` namespace stored in every Megatron checkpoint this project writes, shaped like Megatron-LM's.

Megatron-LM (core_r0.16.x, ``megatron/training/checkpointing.py``) reads it three ways:
- ``check_checkpoint_args`` asserts that num_layers, hidden_size, num_attention_heads and
  add_position_embedding equal the run's flags (plus vocab/tokenizer fields when ``--vocab-file`` is given,
  and TP/PP for legacy ``torch`` checkpoints);
- ``--use-checkpoint-args`` copies the model fields (shape, rope, norm, bias, tying, dropout) onto the run;
- ``load_checkpoint`` reads TP/PP, world and DP size, ``no_save_optim``/``no_save_rng`` and consumed samples.

The values are what the flags of upstream's Qwen2.5 example (and Pai-Megatron-Patch's ``run_mcore_qwen.sh``)
produce for the model, so a plain ``--load`` passes the checks and ``--use-checkpoint-args`` builds the
right model. Both scripts leave ``add_position_embedding`` at its default True (RoPE models ignore it);
a checkpoint meant for scripts that pass ``--no-position-embedding`` records False
(``convert --no-position-embedding``).
"""

from __future__ import annotations

import argparse

import torch


def megatron_lm_args(hf_config: dict, tp: int, pp: int, dtype: torch.dtype, transformer_impl: str,
                     ckpt_format: str = "torch_dist", add_position_embedding: bool = True,
                     extra: dict | None = None) -> argparse.Namespace:
    """Megatron-LM's argument names and values for this HF model; ``extra`` adds or overrides fields
    (a training run's own flags, which already carry Megatron-LM's names)."""
    from ..models.hf_config import family_of, head_dim, rope_theta, size_of

    s = size_of(hf_config)
    family_fields = family_of(hf_config).config_fields(hf_config)  # qkv bias (Qwen2.5), q/k norm (Qwen3)
    theta = rope_theta(hf_config)
    max_pos = hf_config.get("max_position_embeddings", 32768)
    fields = dict(
        # model shape (check_checkpoint_args + --use-checkpoint-args)
        num_layers=s.num_layers, hidden_size=s.hidden_size, ffn_hidden_size=s.ffn_hidden_size,
        num_attention_heads=s.num_attention_heads, group_query_attention=True,
        num_query_groups=s.num_key_value_heads, kv_channels=head_dim(hf_config),
        max_position_embeddings=max_pos, seq_length=max_pos,
        # position embedding: RoPE; add_position_embedding keeps upstream's default (see module doc)
        position_embedding_type="rope", add_position_embedding=add_position_embedding,
        use_rotary_position_embeddings=True,
        rotary_base=int(theta) if float(theta).is_integer() else theta,  # upstream parses --rotary-base as int
        rotary_percent=1.0, rotary_interleaved=False,
        # block
        # epsilon under both names: core_v0.16.1 parses --norm-epsilon into layernorm_epsilon (a TransformerConfig
        # field), older Megatron-LM (and Pai's) into norm_epsilon. Neither is copied by --use-checkpoint-args.
        normalization="RMSNorm", norm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)),
        layernorm_epsilon=float(hf_config.get("rms_norm_eps", 1e-6)), apply_layernorm_1p=False,
        swiglu=True, squared_relu=False, add_bias_linear=False,
        add_qkv_bias=family_fields.get("add_qkv_bias", False), qk_layernorm=family_fields.get("qk_layernorm", False),
        untie_embeddings_and_output_weights=not s.tie_word_embeddings,
        apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0,
        # vocabulary: the HF config's vocab_size is already padded; upstream's example passes it as is
        padded_vocab_size=s.vocab_size, make_vocab_size_divisible_by=1, tokenizer_type="HuggingFaceTokenizer",
        # parallel layout, precision, format
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None, expert_model_parallel_size=1,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        transformer_impl=transformer_impl, ckpt_format=ckpt_format,
        # training progress (load_checkpoint reads these with defaults)
        data_parallel_random_init=False, iteration=0, consumed_train_samples=0, skipped_train_samples=0,
        consumed_valid_samples=0,
    )
    fields.update(extra or {})
    return argparse.Namespace(**fields)
