"""Qwen3 dense through the family table: named sizes, bit-exact HF -> Megatron -> HF over TP/PP splits and both
layouts, logits parity with transformers' Qwen3ForCausalLM (fp32, CPU), legacy layouts derived from the table."""

import glob
import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_autoalign.checkpoint.convert import main as convert
from megatron_autoalign.models import ConfigError, check_model_size, check_tensor_parallel
from megatron_autoalign.models.qwen3 import QWEN3_SIZES
from megatron_autoalign.testing.tiny_models import make_tiny_qwen3
from tests.conftest import _cached


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


def _hf_config(name):
    s = QWEN3_SIZES[name]
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_hidden_layers": s.num_layers,
        "hidden_size": s.hidden_size, "intermediate_size": s.ffn_hidden_size, "head_dim": 128,
        "num_attention_heads": s.num_attention_heads, "num_key_value_heads": s.num_key_value_heads,
        "vocab_size": s.vocab_size, "tie_word_embeddings": s.tie_word_embeddings,
    }


def test_sizes_name_their_family():
    check_model_size("qwen3-4B", _hf_config("4B"))  # head_dim 128 although 2560 / 32 = 80
    check_model_size("4B", _hf_config("4B"))  # no prefix: the config's own family
    check_model_size("Qwen3-0.6B", _hf_config("0.6B"))
    with pytest.raises(ConfigError, match="hidden_size: qwen3-8B has 4096, config has 5120"):
        check_model_size("qwen3-8B", _hf_config("14B"))
    with pytest.raises(ConfigError, match="head_dim: 4B has 128, config has 80"):
        check_model_size("4B", {**_hf_config("4B"), "head_dim": None})
    qwen25_7b = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
    check_model_size("qwen2.5-7B", qwen25_7b)
    with pytest.raises(ConfigError, match="qwen3-8B is not a Qwen2.5 size, but config.json is Qwen2.5.*names a Qwen3 model"):
        check_model_size("qwen3-8B", qwen25_7b)
    with pytest.raises(ConfigError, match="unknown model family 'llama3'"):
        check_model_size("llama3-8B", qwen25_7b)
    check_tensor_parallel(_hf_config("32B"), 8)
    with pytest.raises(ConfigError, match="must divide the number of KV heads"):
        check_tensor_parallel(_hf_config("32B"), 16)


def test_attention_bias_is_refused():
    from megatron_autoalign.models import transformer_config_from_hf

    with pytest.raises(ConfigError, match="attention_bias=true is not supported"):
        transformer_config_from_hf({**_hf_config("0.6B"), "attention_bias": True})


@pytest.fixture(scope="module")
def models(tiny_qwen3_dir, tiny_qwen3_untied_dir):
    return {
        ("tied", "fp32"): tiny_qwen3_dir,
        ("untied", "fp32"): tiny_qwen3_untied_dir,
        ("tied", "bf16"): make_tiny_qwen3(_cached("tiny_qwen3_bf16"), tied=True, num_layers=4, seed=3, dtype=torch.bfloat16),
        ("untied", "bf16"): make_tiny_qwen3(_cached("tiny_qwen3_untied_bf16"), tied=False, num_layers=3, seed=4,
                                            dtype=torch.bfloat16),
    }


def hf_tensors(path):
    out = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("tied", ["tied", "untied"])
@pytest.mark.parametrize("precision,fmt,tp,pp", [
    ("fp32", "torch", 1, 1), ("fp32", "torch", 2, 3), ("bf16", "torch", 2, 2), ("bf16", "torch_dist", 2, 3),
])
def test_round_trip_bit_exact(models, tmp_path, tied, precision, fmt, tp, pp):
    src = models[(tied, precision)]
    mg, back = tmp_path / "mg", tmp_path / "hf"
    use_te = "true" if tp == 1 else "false"  # both legacy spellings
    assert convert(["--load-path", src, "--save-path", str(mg), "--ckpt-format", fmt, "--tp", str(tp), "--pp", str(pp),
                    "--precision", precision, "--use-te", use_te, "--model-size", "auto", "--no-progress"]) == 0
    assert convert(["--mg2hf", "--load-path", str(mg), "--save-path", str(back), "--hf-ckpt-path", src,
                    "--precision", precision, "--no-progress"]) == 0
    a, b = hf_tensors(src), hf_tensors(back)
    assert a.keys() == b.keys()
    assert "model.layers.0.self_attn.q_norm.weight" in b and "model.layers.0.self_attn.q_proj.bias" not in b
    assert ("lm_head.weight" in b) == (tied == "untied")
    for k in a:
        assert b[k].dtype == a[k].dtype and torch.equal(a[k], b[k]), k
    if fmt == "torch":
        rank = torch.load(mg / "release" / (f"mp_rank_01_{pp - 1:03d}" if pp > 1 else "mp_rank_00") / "model_optim_rng.pt",
                          weights_only=False)
        assert rank["args"].qk_layernorm and not rank["args"].add_qkv_bias and rank["args"].kv_channels == 32
        # q/k norms are replicated over TP: every rank holds the whole [head_dim] weight
        assert tuple(rank["model"]["decoder.layers.0.self_attention.q_layernorm.weight"].shape) == (32,)


@pytest.mark.parametrize("fixture,fmt,tp,pp", [("tiny_qwen3_dir", "torch_dist", 1, 1), ("tiny_qwen3_untied_dir", "torch", 2, 2)])
def test_logits_parity_with_transformers(request, tmp_path, fixture, fmt, tp, pp):
    from megatron_autoalign.checkpoint.verify import verify

    src = request.getfixturevalue(fixture)
    assert convert(["--load-path", src, "--save-path", str(tmp_path / "mg"), "--ckpt-format", fmt, "--tp", str(tp),
                    "--pp", str(pp), "--precision", "fp32", "--no-progress"]) == 0
    max_abs, cosine = verify(src, str(tmp_path / "mg"))  # transformers' Qwen3ForCausalLM, eager attention
    assert max_abs < 1e-4 and cosine > 0.99999


@pytest.mark.parametrize("family_dir", ["tiny_4layer_dir", "tiny_qwen3_dir"])
def test_legacy_local_layout_is_the_local_models_state_dict(request, family_dir):
    """The legacy local-spec layer entries derived from the table are exactly a live local-spec layer's
    state dict (names and order, _extra_state included)."""
    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import build_gpt_model, family_of, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.models.tensor_map import legacy_layer_entries

    ensure_process_group()
    cfg = load_hf_config(request.getfixturevalue(family_dir))
    model = build_gpt_model(cfg, transformer_config_from_hf(cfg, torch.float32))
    layer0 = [k[len("decoder.layers.0."):] for k in model.state_dict() if k.startswith("decoder.layers.0.")]
    assert layer0 == [name for name, _ in legacy_layer_entries(family_of(cfg).layer_tensors, use_te=False)]


def test_convertor_script_takes_qwen3_sizes(tiny_qwen3_dir, tmp_path):
    """The upstream positional script passes a Qwen3 size through to the check against config.json (one line,
    exit 2 when it does not match). Conversion itself is the CLI's, tested above."""
    from tests.unit.test_convert_parity import SCRIPT, _run

    p = _run(["bash", SCRIPT, "qwen3-8B", tiny_qwen3_dir, str(tmp_path / "mg"), "1", "1", "fp32", "true", "false"])
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-2000:]
    assert "config.json: model size qwen3-8B does not match config.json (num_layers: qwen3-8B has 36, config has 4" in errors[0]
