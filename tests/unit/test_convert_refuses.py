"""Conversion refuses to be wrong: a mismatching ORIGINAL_HF_PATH, logits beyond tolerance, configs whose
defaults would differ from HF's, missing keys and failed writes all end with one line and a non-zero exit."""

import json
import os
import shutil

import pytest
import torch

from megatron_autoalign.checkpoint.convert import main as convert


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


@pytest.fixture(scope="module")
def converted(tiny_tied_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("refuse") / "mg"
    assert convert(["--load-path", tiny_tied_dir, "--save-path", str(out), "--precision", "fp32", "--no-progress"]) == 0
    return str(out)


def edited_copy(src: str, dst, **changes) -> str:
    """A copy of an HF directory whose config.json has ``changes`` (None deletes a key)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    cfg = json.load(open(path))
    for k, v in changes.items():
        cfg.pop(k, None) if v is None else cfg.__setitem__(k, v)
    json.dump(cfg, open(path, "w"))
    return str(dst)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()  # (transformers may print progress bars before)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return errors[0]


@pytest.mark.parametrize("change,named", [
    ({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}, "rope_theta 10000.0 vs rotary_base 1000000"),
    ({"rms_norm_eps": 1e-5}, "rms_norm_eps 1e-05 vs norm_epsilon 1e-06"),
    ({"vocab_size": 151552}, "vocab_size 151552 vs padded_vocab_size 151936"),
])
def test_mg2hf_refuses_hf_config_that_disagrees_with_the_checkpoint(converted, tiny_tied_dir, tmp_path, capsys,
                                                                      change, named):
    other = edited_copy(tiny_tied_dir, tmp_path / "other", **change)
    out = tmp_path / "hf"
    assert convert(["--mg2hf", "--load-path", converted, "--save-path", str(out), "--hf-ckpt-path", other,
                    "--no-progress"]) == 2
    line = one_line_error(capsys)
    assert named in line and "--hf-ckpt-path" in line
    assert not out.exists()  # nothing half-written


def test_verify_beyond_tolerance_exits_nonzero(converted, tiny_tied_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from megatron_autoalign.checkpoint.verify import main as verify

    assert verify(["--hf-path", tiny_tied_dir, "--megatron-path", converted]) == 0  # the right pair passes
    # an HF model that differs a little (final norm +1%): a converter bug of that size must not pass
    off = edited_copy(tiny_tied_dir, tmp_path / "off")
    weights = load_file(os.path.join(off, "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.01
    save_file(weights, os.path.join(off, "model.safetensors"), metadata={"format": "pt"})
    assert verify(["--hf-path", off, "--megatron-path", converted]) == 2
    assert "verify failed: logits max-abs diff" in one_line_error(capsys)
    # a config that disagrees with the checkpoint (same shapes, other rope_theta) is refused before comparing
    wrong_rope = edited_copy(tiny_tied_dir, tmp_path / "wrong", rope_parameters={"rope_theta": 1e4, "rope_type": "default"})
    assert verify(["--hf-path", wrong_rope, "--megatron-path", converted]) == 2
    assert "rope_theta 10000.0 vs rotary_base 1000000" in one_line_error(capsys)


def test_config_defaults_are_transformers_defaults(tiny_tied_dir, tmp_path):
    """A config.json without rope_theta/rope_parameters or rms_norm_eps means what HF reads: 10000 and 1e-6."""
    from transformers import AutoConfig

    from megatron_autoalign.checkpoint.megatron_args import megatron_lm_args
    from megatron_autoalign.models import load_hf_config

    bare = edited_copy(tiny_tied_dir, tmp_path / "bare", rope_theta=None, rope_parameters=None, rms_norm_eps=None,
                       tie_word_embeddings=None)
    hf = AutoConfig.from_pretrained(bare)
    cfg = load_hf_config(bare)
    hf_theta = (getattr(hf, "rope_parameters", None) or {}).get("rope_theta", getattr(hf, "rope_theta", None))
    assert cfg["rope_theta"] == hf_theta == 10000.0
    assert cfg["rms_norm_eps"] == hf.rms_norm_eps and cfg["tie_word_embeddings"] == hf.tie_word_embeddings
    args = megatron_lm_args(cfg, 1, 1, torch.float32, "local")
    assert args.rotary_base == 10000 and args.untie_embeddings_and_output_weights == (not hf.tie_word_embeddings)


@pytest.mark.parametrize("key", ["hidden_size", "vocab_size", "num_key_value_heads"])
def test_missing_config_key_is_one_line(tiny_tied_dir, tmp_path, capsys, key):
    broken = edited_copy(tiny_tied_dir, tmp_path / "broken", **{key: None})
    assert convert(["--load-path", broken, "--save-path", str(tmp_path / "mg"), "--no-progress"]) == 2
    assert f"missing {key}" in one_line_error(capsys)


def test_failed_conversion_leaves_no_release_and_a_retry_works(tiny_tied_dir, tmp_path, capsys):
    # config.json's ffn width disagrees with the tensors: found while writing, after release/ was created
    broken = edited_copy(tiny_tied_dir, tmp_path / "broken", intermediate_size=96)
    dst = tmp_path / "mg"
    assert convert(["--load-path", broken, "--save-path", str(dst), "--precision", "fp32", "--no-progress"]) == 2
    assert "mlp" in one_line_error(capsys)
    assert not dst.exists()
    dst.mkdir()  # an empty destination that existed before stays, empty
    assert convert(["--load-path", broken, "--save-path", str(dst), "--precision", "fp32", "--no-progress"]) == 2
    assert dst.is_dir() and os.listdir(dst) == []
    assert convert(["--load-path", tiny_tied_dir, "--save-path", str(dst), "--precision", "fp32", "--no-progress"]) == 0


def test_epsilon_recorded_under_upstream_name_is_compared(tiny_tied_dir, monkeypatch):
    """Checkpoints written by Megatron-LM core_v0.16 record --norm-epsilon as ``layernorm_epsilon`` only."""
    from megatron_autoalign.checkpoint import recorded_config
    from megatron_autoalign.checkpoint.errors import CheckpointError

    hf_config = json.load(open(os.path.join(tiny_tied_dir, "config.json")))
    monkeypatch.setattr(recorded_config, "recorded_args", lambda *a: {"layernorm_epsilon": 1e-5})
    with pytest.raises(CheckpointError, match=r"rms_norm_eps 1e-06 vs norm_epsilon 1e-05"):
        recorded_config.check_hf_config_matches(hf_config, "config.json", "iter_0000007", "torch_dist")
    monkeypatch.setattr(recorded_config, "recorded_args", lambda *a: {"layernorm_epsilon": hf_config["rms_norm_eps"]})
    recorded_config.check_hf_config_matches(hf_config, "config.json", "iter_0000007", "torch_dist")
