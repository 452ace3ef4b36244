"""Checkpoints this project writes load the way upstream Megatron-LM loads them, and the other way round.

Expectations come from upstream's published files (read, not copied):
- Megatron-LM core_v0.16.1, ``megatron/training/checkpointing.py``: ``check_checkpoint_args`` (asserted
  fields), ``load_args_from_checkpoint`` (fields copied with ``--use-checkpoint-args``), ``load_checkpoint``
  (top-level keys, ``no_save_optim``/``no_save_rng``, strict dist-checkpoint load with
  ``--dist-ckpt-strictness`` default ``assume_ok_unexpected``, from ``megatron/training/training_config.py``).
- Megatron-LM core_v0.16.1, ``megatron/training/arguments.py``: defaults (``--no-position-embedding`` is a
  store_false into ``add_position_embedding``, so the default is True; ``--rotary-base`` is an int).
- Megatron-LM core_v0.16.1, ``examples/post_training/modelopt/conf/Qwen/Qwen2.5-{0.5B,7B}-Instruct.sh``.
- Pai-Megatron-Patch ``examples/qwen2_5/run_mcore_qwen.sh`` (commit 33191bd).
"""

import argparse
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from megatron_autoalign.checkpoint.convert import main as convert
from megatron_autoalign.checkpoint.megatron_args import megatron_lm_args

# ------------------------------------------------------------------ the upstream flags, as values

# Qwen2.5-0.5B-Instruct.sh / Qwen2.5-7B-Instruct.sh (core_v0.16.1). Flags not passed keep upstream's defaults:
# add_position_embedding True (arguments.py), untie False unless --untie-embeddings-and-output-weights.
UPSTREAM_EXAMPLE = {
    "0.5B": dict(num_layers=24, hidden_size=896, ffn_hidden_size=4864, num_attention_heads=14,
                 group_query_attention=True, num_query_groups=2, kv_channels=64, max_position_embeddings=32768,
                 position_embedding_type="rope", rotary_percent=1.0, rotary_base=1000000, normalization="RMSNorm",
                 swiglu=True, add_bias_linear=False, add_qkv_bias=True, padded_vocab_size=151936,
                 make_vocab_size_divisible_by=1, tokenizer_type="HuggingFaceTokenizer",
                 untie_embeddings_and_output_weights=False, add_position_embedding=True),
    "7B": dict(num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
               group_query_attention=True, num_query_groups=4, kv_channels=128, max_position_embeddings=32768,
               position_embedding_type="rope", rotary_percent=1.0, rotary_base=1000000, normalization="RMSNorm",
               swiglu=True, add_bias_linear=False, add_qkv_bias=True, padded_vocab_size=152064,
               make_vocab_size_divisible_by=1, tokenizer_type="HuggingFaceTokenizer",
               untie_embeddings_and_output_weights=True, add_position_embedding=True),
}
# run_mcore_qwen.sh (Pai, 33191bd): its 0.5B and 7B blocks plus the common megatron_options.
PAI_RUN_MCORE_QWEN = {
    "0.5B": dict(num_layers=24, hidden_size=896, num_attention_heads=14, ffn_hidden_size=4864,
                 group_query_attention=True, num_query_groups=2, norm_epsilon=1e-6, normalization="RMSNorm",
                 swiglu=True, use_rotary_position_embeddings=True, position_embedding_type="rope",
                 add_bias_linear=False, add_qkv_bias=True, rotary_percent=1.0, rotary_base=1000000,
                 attention_dropout=0.0, hidden_dropout=0.0, untie_embeddings_and_output_weights=False,
                 add_position_embedding=True),
    "7B": dict(num_layers=28, hidden_size=3584, num_attention_heads=28, ffn_hidden_size=18944,
               group_query_attention=True, num_query_groups=4, norm_epsilon=1e-6, normalization="RMSNorm",
               swiglu=True, use_rotary_position_embeddings=True, position_embedding_type="rope",
               add_bias_linear=False, add_qkv_bias=True, rotary_percent=1.0, rotary_base=1000000,
               attention_dropout=0.0, hidden_dropout=0.0, untie_embeddings_and_output_weights=True,
               add_position_embedding=True),
}

# check_checkpoint_args: always; with --vocab-file; for non-dist (legacy) checkpoints of version 3.0.
CHECKED_ALWAYS = ("num_layers", "hidden_size", "num_attention_heads", "add_position_embedding")
CHECKED_WITH_VOCAB_FILE = ("max_position_embeddings", "make_vocab_size_divisible_by", "tokenizer_type")
CHECKED_LEGACY = ("padded_vocab_size", "tensor_model_parallel_size", "pipeline_model_parallel_size")
# load_args_from_checkpoint (--use-checkpoint-args) for a dense model: fields it copies when not None.
COPIED_BY_USE_CHECKPOINT_ARGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads", "num_query_groups",
    "group_query_attention", "kv_channels", "max_position_embeddings", "position_embedding_type",
    "add_position_embedding", "use_rotary_position_embeddings", "rotary_base", "rotary_percent",
    "rotary_interleaved", "add_bias_linear", "add_qkv_bias", "squared_relu", "swiglu",
    "untie_embeddings_and_output_weights", "apply_layernorm_1p", "normalization", "apply_query_key_layer_scaling",
    "attention_dropout", "hidden_dropout", "tokenizer_type", "padded_vocab_size", "ckpt_format",
    "tensor_model_parallel_size", "pipeline_model_parallel_size",
)
# Values the loaders need where the flags above say nothing: the HF model's own (Qwen2.5 has no dropout,
# no 1p norm, no interleaved rope). norm_epsilon: the upstream example passes none (its default 1e-5 is
# not Qwen2.5-0.5B's 1e-6); Pai passes the model's.
MODEL_VALUES = dict(apply_layernorm_1p=False, squared_relu=False, rotary_interleaved=False,
                    apply_query_key_layer_scaling=False, attention_dropout=0.0, hidden_dropout=0.0, norm_epsilon=1e-6)


def _hf_config(size: str) -> dict:
    """The published Qwen2.5 config.json values of the size (see reference/qwen2_5_facts.md)."""
    from megatron_autoalign.models.qwen2 import QWEN2_5_SIZES

    s = QWEN2_5_SIZES[size]
    return dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_hidden_layers=s.num_layers,
                hidden_size=s.hidden_size, intermediate_size=s.ffn_hidden_size,
                num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
                vocab_size=s.vocab_size, tie_word_embeddings=s.tie_word_embeddings, rope_theta=1000000.0,
                rms_norm_eps=1e-6, max_position_embeddings=32768)


@pytest.mark.parametrize("size", ["0.5B", "7B"])
@pytest.mark.parametrize("script", ["upstream_example", "pai"])
@pytest.mark.parametrize("ckpt_format", ["torch_dist", "torch"])
def test_stored_args_pass_upstream_checks_and_give_the_upstream_model(size, script, ckpt_format):
    flags = (UPSTREAM_EXAMPLE if script == "upstream_example" else PAI_RUN_MCORE_QWEN)[size]
    run = dict(MODEL_VALUES, **flags, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
               ckpt_format=ckpt_format)
    stored = megatron_lm_args(_hf_config(size), 2, 2, torch.bfloat16, "transformer_engine", ckpt_format)
    assert isinstance(stored, argparse.Namespace)  # upstream reads it with getattr
    # check_checkpoint_args: every asserted field equals the run's value (vocab-file fields where the run sets them)
    checked = CHECKED_ALWAYS + CHECKED_WITH_VOCAB_FILE + (CHECKED_LEGACY if ckpt_format == "torch" else ())
    for name in checked:
        if name in run:
            assert getattr(stored, name) == run[name], name
    # --use-checkpoint-args: every copied field is present and gives the model the flags describe
    for name in COPIED_BY_USE_CHECKPOINT_ARGS:
        assert getattr(stored, name, None) is not None, f"{name} missing: --use-checkpoint-args would keep the run's"
        if name in run:
            assert getattr(stored, name) == run[name], name
            assert type(getattr(stored, name)) is type(run[name]), name  # e.g. rotary_base is an int upstream
    # load_checkpoint's own reads (with defaults upstream): nothing that would skip or break loading
    assert stored.iteration == 0 and stored.consumed_train_samples == 0 and stored.consumed_valid_samples == 0
    assert not getattr(stored, "no_save_optim", False) and not getattr(stored, "no_save_rng", False)
    assert not stored.data_parallel_random_init


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_epsilon_is_stored_under_core_v0_16_name(eps):
    """core_v0.16.1 declares --norm-epsilon on TransformerConfig.layernorm_epsilon (transformer_config.py,
    argparse_meta arg_names), so its args namespace says layernorm_epsilon; older Megatron-LM and Pai say
    norm_epsilon. Found by running upstream's parse_args + load_checkpoint (tests/distributed/test_upstream_loader.py)."""
    config = dict(_hf_config("0.5B"), rms_norm_eps=eps)
    stored = megatron_lm_args(config, 1, 1, torch.float32, "local", "torch_dist")
    assert stored.layernorm_epsilon == eps and stored.norm_epsilon == eps
    assert type(stored.layernorm_epsilon) is float


def test_no_position_embedding_users_get_false(tiny_untied_dir, tmp_path):
    from megatron.core import dist_checkpointing

    assert convert(["--load-path", tiny_untied_dir, "--save-path", str(tmp_path / "mg"), "--no-position-embedding",
                    "--precision", "fp32", "--no-progress"]) == 0
    args = dist_checkpointing.load_common_state_dict(str(tmp_path / "mg" / "release"))["args"]
    assert args.add_position_embedding is False  # = Megatron-LM run with --no-position-embedding


# ------------------------------------------------------------------ stock megatron-core models


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


def stock_gpt_model(hf_dir: str):
    """megatron-core's GPTModel with its local spec, configured from Megatron-LM flags (as upstream's
    gpt_builders would build it), not through this project's builder."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import load_hf_config

    ensure_process_group()
    a = megatron_lm_args(load_hf_config(hf_dir), 1, 1, torch.float32, "local")
    config = TransformerConfig(
        num_layers=a.num_layers, hidden_size=a.hidden_size, ffn_hidden_size=a.ffn_hidden_size,
        num_attention_heads=a.num_attention_heads, num_query_groups=a.num_query_groups, kv_channels=a.kv_channels,
        normalization=a.normalization, layernorm_epsilon=a.norm_epsilon, gated_linear_unit=a.swiglu,
        activation_func=torch.nn.functional.silu, add_bias_linear=a.add_bias_linear, add_qkv_bias=a.add_qkv_bias,
        use_cpu_initialization=True, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False)
    return GPTModel(config, get_gpt_layer_local_spec(normalization=a.normalization), vocab_size=a.padded_vocab_size,
                    max_sequence_length=a.max_position_embeddings, position_embedding_type=a.position_embedding_type,
                    rotary_base=a.rotary_base, share_embeddings_and_output_weights=not a.untie_embeddings_and_output_weights)


def te_request(model) -> dict:
    """The keys a Transformer Engine spec model asks for: the local ones (megatron maps the local norms to
    TE names) plus the TE RMSNorm's extra state of the final norm."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    sd = model.sharded_state_dict()
    key = "decoder.final_layernorm._extra_state"
    sd[key] = ShardedObject(key, None, (1,), (0,), replica_id=0)
    return sd


def hf_tensors(hf_dir):
    from safetensors.torch import load_file

    out = {}
    for f in os.listdir(hf_dir):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(hf_dir, f)))
    return out


@pytest.mark.parametrize("spec", ["local", "te"])
def test_converted_release_loads_strictly_into_stock_gpt_model(tiny_untied_dir, tmp_path, spec):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    mg = tmp_path / "mg"
    assert convert(["--load-path", tiny_untied_dir, "--save-path", str(mg), "--precision", "fp32",
                    "--part-size", "100KB", "--no-progress"]) == 0  # several parts: the merged checkpoint is tested
    model = stock_gpt_model(tiny_untied_dir)
    request = {"model": te_request(model) if spec == "te" else model.sharded_state_dict()}
    # upstream's default --dist-ckpt-strictness: a requested key missing from the checkpoint raises
    loaded = dist_checkpointing.load(request, str(mg / "release"), strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    if spec == "te":
        assert loaded["model"].pop("decoder.final_layernorm._extra_state") is None  # TE's "no FP8 state"
    model.load_state_dict(loaded["model"], strict=True)
    hf = hf_tensors(tiny_untied_dir)
    p = dict(model.named_parameters())
    assert torch.equal(p["embedding.word_embeddings.weight"], hf["model.embed_tokens.weight"])
    assert torch.equal(p["output_layer.weight"], hf["lm_head.weight"])
    assert torch.equal(p["decoder.final_layernorm.weight"], hf["model.norm.weight"])
    for layer in range(3):
        h, m = f"model.layers.{layer}.", f"decoder.layers.{layer}."
        assert torch.equal(p[m + "input_layernorm.weight"], hf[h + "input_layernorm.weight"])
        assert torch.equal(p[m + "pre_mlp_layernorm.weight"], hf[h + "post_attention_layernorm.weight"])
        assert torch.equal(p[m + "self_attention.linear_proj.weight"], hf[h + "self_attn.o_proj.weight"])
        assert torch.equal(p[m + "mlp.linear_fc2.weight"], hf[h + "mlp.down_proj.weight"])
        gate, up = p[m + "mlp.linear_fc1.weight"].chunk(2)
        assert torch.equal(gate, hf[h + "mlp.gate_proj.weight"]) and torch.equal(up, hf[h + "mlp.up_proj.weight"])


def test_te_request_fails_on_a_checkpoint_without_the_extra_state(tiny_untied_dir, tmp_path):
    """The test above can fail: drop the entry and megatron-core refuses (the bug of issue 15)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling
    from torch.distributed.checkpoint.api import CheckpointException

    model = stock_gpt_model(tiny_untied_dir)
    state = {"model": model.sharded_state_dict(), "args": argparse.Namespace(), "iteration": 0}
    dist_checkpointing.save(state, str(tmp_path))
    with pytest.raises(CheckpointException, match="final_layernorm._extra_state"):
        dist_checkpointing.load({"model": te_request(model)}, str(tmp_path), strict=StrictHandling.ASSUME_OK_UNEXPECTED)


@pytest.mark.parametrize("use_te", ["true", "false"])
def test_legacy_names_follow_use_te(tiny_untied_dir, tmp_path, capsys, use_te):
    """Upstream loads a legacy file with model.load_state_dict(strict=True) and, on failure, silently
    retries non-strictly: the names must be the exact ones of the spec; the convertor says which it wrote."""
    mg = tmp_path / "mg"
    assert convert(["--load-path", tiny_untied_dir, "--save-path", str(mg), "--ckpt-format", "torch",
                    "--use-te", use_te, "--precision", "fp32", "--no-progress"]) == 0
    impl = "transformer_engine" if use_te == "true" else "local"
    assert f"load it with --transformer-impl {impl}" in capsys.readouterr().out
    sd = torch.load(mg / "release" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)["model"]
    model = stock_gpt_model(tiny_untied_dir)
    if use_te == "false":
        model.load_state_dict(sd, strict=True)  # exactly the local spec's names
        assert torch.equal(model.decoder.layers[0].input_layernorm.weight,
                           hf_tensors(tiny_untied_dir)["model.layers.0.input_layernorm.weight"])
    else:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert "decoder.layers.0.input_layernorm.weight" in missing  # what upstream's fallback would drop
        assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in unexpected


# ------------------------------------------------------------------ MG -> HF from upstream-written checkpoints


def _fill_random(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _optimizer_like(model_sd: dict) -> dict:
    """Adam moments under their own keys, as megatron's optimizer.sharded_state_dict writes them."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    out = {}
    for name, sh in model_sd.items():
        if isinstance(sh, ShardedTensor):
            for moment in ("exp_avg", "exp_avg_sq"):
                out[f"{moment}.{name}"] = dataclasses.replace(sh, key=f"optimizer.state.{moment}.{sh.key}",
                                                              data=torch.rand_like(sh.data))
    return out


def _upstream_args(hf_dir, ckpt_format, impl):
    from megatron_autoalign.models import load_hf_config

    return megatron_lm_args(load_hf_config(hf_dir), 1, 1, torch.float32, impl, ckpt_format)


def _expected_hf(model) -> dict:
    from megatron_autoalign.models.tensor_map import GROUPED_QKV, Dims

    p = {k: v.detach() for k, v in model.named_parameters()}
    c = model.config
    dims = Dims(c.num_layers, c.hidden_size, c.ffn_hidden_size, c.num_attention_heads, c.num_query_groups,
                c.kv_channels, model.vocab_size, False)
    out = {"model.embed_tokens.weight": p["embedding.word_embeddings.weight"], "lm_head.weight": p["output_layer.weight"],
           "model.norm.weight": p["decoder.final_layernorm.weight"]}
    for l in range(c.num_layers):
        h, m = f"model.layers.{l}.", f"decoder.layers.{l}."
        q, k, v = GROUPED_QKV.to_hf(p[m + "self_attention.linear_qkv.weight"], dims, 3)
        qb, kb, vb = GROUPED_QKV.to_hf(p[m + "self_attention.linear_qkv.bias"], dims, 3)
        gate, up = p[m + "mlp.linear_fc1.weight"].chunk(2)
        out.update({h + "input_layernorm.weight": p[m + "input_layernorm.weight"],
                    h + "post_attention_layernorm.weight": p[m + "pre_mlp_layernorm.weight"],
                    h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
                    h + "self_attn.q_proj.bias": qb, h + "self_attn.k_proj.bias": kb, h + "self_attn.v_proj.bias": vb,
                    h + "self_attn.o_proj.weight": p[m + "self_attention.linear_proj.weight"],
                    h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
                    h + "mlp.down_proj.weight": p[m + "mlp.linear_fc2.weight"]})
    return out


def _te_legacy_names(sd: dict) -> dict:
    """A TE-spec legacy state dict: the layer norms inside linear_qkv / linear_fc1, TE extra states present."""
    import io

    out = {}
    for k, v in sd.items():
        k = k.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
        k = k.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
        out[k] = io.BytesIO() if k.endswith("_extra_state") else v
    return out


@pytest.mark.parametrize("layout", ["torch_dist", "legacy_local", "legacy_te"])
@pytest.mark.parametrize("tracker", ["release", 7])
def test_mg2hf_reads_upstream_written_checkpoints(tiny_untied_dir, tmp_path, layout, tracker):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    model = stock_gpt_model(tiny_untied_dir)
    _fill_random(model)
    ckpt = tmp_path / "upstream"
    it_dir = ckpt / ("release" if tracker == "release" else f"iter_{tracker:07d}")
    it_dir.mkdir(parents=True)
    common = {"iteration": 0 if tracker == "release" else tracker, "checkpoint_version": 3.0,
              "num_floating_point_operations_so_far": 1.0e12}
    if layout == "torch_dist":
        sd = te_request(model)
        state = {"model": sd, "optimizer": _optimizer_like(sd), "opt_param_scheduler": {"num_steps": 7},
                 "rng_state": ShardedObject("rng_state", [{"random_rng_state": None}], (1, 1), (0, 0), replica_id=0),
                 "args": _upstream_args(tiny_untied_dir, "torch_dist", "transformer_engine"), **common}
        dist_checkpointing.save(state, str(it_dir))
    else:
        sd = model.state_dict_for_save_checkpoint()
        impl = "local"
        if layout == "legacy_te":
            sd, impl = _te_legacy_names(sd), "transformer_engine"
        (it_dir / "mp_rank_00").mkdir()
        torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "rng_state": [{}],
                    "args": _upstream_args(tiny_untied_dir, "torch", impl), **common},
                   it_dir / "mp_rank_00" / "model_optim_rng.pt")
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(tracker))
    out = tmp_path / "hf"
    assert convert(["--mg2hf", "--load-path", str(ckpt), "--save-path", str(out), "--hf-ckpt-path", tiny_untied_dir,
                    "--precision", "fp32", "--no-progress"]) == 0
    got, want = hf_tensors(out), _expected_hf(model)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
