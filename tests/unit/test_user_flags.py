"""Megatron-LM flags that used to be accepted and ignored now take effect or are refused with one line:
--num-workers (refused unless 0), --attention-backend (TE kernels need the TE spec; local = the local spec),
--ckpt-format (torch writes the legacy layout: tests/distributed/test_legacy_checkpoint.py)."""

import pytest

from megatron_autoalign.training.arguments import ArgumentError, build_parser
from megatron_autoalign.training.config import parse_run_config


def _args(*argv, world=1):
    return parse_run_config(["--data-path", "d", "--hf-config", "/nonexistent", *argv], world)


def _refused(*argv) -> str:
    with pytest.raises(ArgumentError) as e:
        _args(*argv)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_num_workers_is_refused_unless_zero():
    assert _args("--num-workers", "0").data.num_workers == 0
    assert _refused("--num-workers", "8").startswith("--num-workers 8: batches are collated in the training process")


@pytest.fixture
def te_available(monkeypatch):
    from megatron_autoalign.models import builder

    def set_available(value: bool):
        monkeypatch.setattr(builder, "transformer_engine_available", lambda: value)
    return set_available


def test_attention_backend_needs_transformer_engine_for_its_kernels(te_available):
    te_available(False)
    for backend in ("flash", "fused", "unfused"):
        assert f"--attention-backend {backend} picks a Transformer Engine attention kernel" in _refused(
            "--attention-backend", backend)
    assert "(Transformer Engine is not installed)" in _refused("--attention-backend", "flash")
    te_available(True)
    assert "(--transformer-impl local)" in _refused("--attention-backend", "flash", "--transformer-impl", "local")
    assert _args("--attention-backend", "flash").model.attention_backend == "flash"
    # local = Megatron-LM's local spec, whatever auto would have picked
    assert _args("--attention-backend", "local").model.transformer_impl == "local"
    assert "drop --transformer-impl transformer_engine" in _refused(
        "--attention-backend", "local", "--transformer-impl", "transformer_engine")


def test_attention_backend_reaches_megatrons_transformer_config(te_available, tiny_tied_dir):
    from megatron.core.transformer.enums import AttnBackend

    from megatron_autoalign.models import load_hf_config
    from megatron_autoalign.training.config import for_model
    from megatron_autoalign.training.model_and_optimizer import build_transformer_config

    hf_cfg = load_hf_config(tiny_tied_dir)
    for backend, expected in (("flash", AttnBackend.flash), ("fused", AttnBackend.fused), ("auto", AttnBackend.auto)):
        te_available(True)  # the flags as on a machine with Transformer Engine
        cfg = for_model(_args("--attention-backend", backend), hf_cfg)
        te_available(False)  # building the config must not need TE's fused RoPE here
        assert build_transformer_config(cfg, hf_cfg).attention_backend == expected


def test_ckpt_format_choices():
    assert _args().checkpoint.ckpt_format == "torch_dist"
    assert _args("--ckpt-format", "torch").checkpoint.ckpt_format == "torch"
    with pytest.raises(ArgumentError) as e:  # argparse's errors are one line too, not usage + exit
        build_parser().parse_args(["--ckpt-format", "zarr"])
    assert str(e.value).startswith("argument --ckpt-format: invalid choice: 'zarr'")
