"""The frozen run config (training/config.py): one parse, derived values, flags that cannot take effect."""

import dataclasses

import pytest

from megatron_autoalign.training.arguments import ArgumentError, build_parser
from megatron_autoalign.training.config import GROUPS, config_from_flags, for_data, for_model, parse_run_config

BASE = ["--data-path", "d", "--hf-config", "/nonexistent"]


def _cfg(*argv, world=8, task_cls=None):
    return parse_run_config([*BASE, *argv], world, task_cls)


def test_config_is_frozen_and_grouped():
    cfg = _cfg("--tensor-model-parallel-size", "2", "--lr", "3e-4")
    assert cfg.parallel.tensor_model_parallel_size == 2 and cfg.optimizer.lr == 3e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optimizer.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = None
    # the flat view carries every flag under its Megatron-LM name (saved with checkpoints)
    flat = cfg.flat()
    assert flat["tensor_model_parallel_size"] == 2 and flat["lr"] == 3e-4 and flat["data_path"] == "d"


def test_every_flag_has_exactly_one_field():
    from megatron_autoalign.dpo.task import DPOTask

    fields = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    fields += [f.name for f in dataclasses.fields(DPOTask.config_class)]
    assert len(fields) == len(set(fields)), "a field name is in two groups"
    values = vars(build_parser(DPOTask).parse_args(BASE))
    assert config_from_flags(values, 1, DPOTask).task.beta == 0.1
    with pytest.raises(AssertionError, match="flags without a config field.*'new_flag'"):
        config_from_flags({**values, "new_flag": 1}, 1, DPOTask)


def test_sequence_parallel_at_tp1_warns_like_megatron():
    cfg = _cfg("--sequence-parallel")
    assert cfg.parallel.sequence_parallel is False
    assert any("disabling sequence parallelism" in w for w in cfg.warnings)
    assert not _cfg("--tensor-model-parallel-size", "2", "--sequence-parallel").warnings


@pytest.mark.parametrize("argv,fragment", [
    (["--recompute-method", "block"], "need --recompute-granularity full"),
    (["--recompute-granularity", "selective", "--recompute-num-layers", "2"], "need --recompute-granularity full"),
    (["--recompute-activations", "--recompute-granularity", "full"], "contradicts --recompute-granularity full"),
    (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"], "mutually exclusive"),
    (["--loss-scale", "1024"], "--loss-scale needs --fp16 or --bf16"),
    (["--save-interval", "10"], "--save-interval needs --save"),
    (["--no-save-optim"], "--no-save-optim needs --save"),
    (["--data-path", "a", "b"], "exactly one dataset prefix"),
])
def test_flags_that_cannot_take_effect_are_errors(argv, fragment):
    with pytest.raises(ArgumentError) as e:
        _cfg(*argv)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_flags_without_effect_where_upstream_accepts_them_warn():
    cfg = _cfg("--no-load-optim", "--exit-interval", "3")
    assert any("--no-load-optim has no effect without --load" in w for w in cfg.warnings)
    assert any("--exit-interval without --save" in w for w in cfg.warnings)
    assert not _cfg("--load", "x", "--no-load-optim", "--save", "x", "--exit-interval", "3").warnings
    upstream = _cfg("--patch-tokenizer-type", "Qwen2Tokenizer", "--swiglu").warnings
    assert upstream == ("--patch-tokenizer-type, --swiglu: accepted for upstream Megatron-LM scripts, no effect here",)


def test_unused_parts_of_the_split_are_said():
    assert not _cfg("--split", "98,2,0").warnings
    assert _cfg("--split", "90,5,5").warnings == (
        "--split 90,5,5: the test part (5% of the rows) is neither trained on nor evaluated (there is no test pass)",)
    assert _cfg("--split", "98,2,0", "--valid-data-path", "v").warnings == (
        "--split 98,2,0: --valid-data-path replaces the validation part, so its 2% of the rows are neither "
        "trained on nor evaluated",)


def test_recompute_defaults_follow_megatron():
    full = _cfg("--recompute-granularity", "full").model
    assert (full.recompute_method, full.recompute_num_layers) == ("uniform", 1)
    assert _cfg("--recompute-activations").model.recompute_granularity == "selective"


def test_model_stage_derives_virtual_pipeline_size():
    hf = {"num_hidden_layers": 8, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 128, "vocab_size": 256}
    cfg = _cfg("--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "2")
    assert cfg.parallel.virtual_pipeline_model_parallel_size is None
    assert for_model(cfg, hf).parallel.virtual_pipeline_model_parallel_size == 2
    assert cfg.parallel.virtual_pipeline_model_parallel_size is None  # a new config, the old one unchanged
    bad = _cfg("--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "3")
    with pytest.raises(ArgumentError, match="8 layers do not split into PP 2 x 3"):
        for_model(bad, hf)


def test_data_stage_derives_length_and_iterations():
    manifest = {"seq_len": 512}
    cfg = _cfg("--global-batch-size", "16", "--epochs", "2", "--eval-interval", "5", world=1)
    done = for_data(cfg, manifest, num_train_samples=100, has_validation=False)
    assert (cfg.data.seq_length, cfg.training.train_iters) == (None, None)  # unchanged
    assert done.data.seq_length == 512
    assert done.training.train_iters == 2 * 100 // 16 and done.optimizer.lr_decay_iters == 12
    assert any("--eval-interval 5 has no effect" in w for w in done.warnings)
    given = for_data(_cfg("--train-iters", "7", "--lr-decay-iters", "20", "--seq-length", "256", world=1),
                     manifest, 100, True)
    assert (given.data.seq_length, given.training.train_iters, given.optimizer.lr_decay_iters) == (256, 7, 20)
    with pytest.raises(ArgumentError, match="--lr-warmup-iters 12 must be smaller than the decay iterations 12"):
        for_data(_cfg("--lr-warmup-iters", "12", "--global-batch-size", "16", "--epochs", "2", world=1),
                 manifest, 100, True)
    with pytest.raises(ValueError, match="--max-padding-length 256 is shorter than --seq-length 512"):
        for_data(_cfg("--max-padding-length", "256", world=1), manifest, 100, True)


def test_dpo_task_config_reference_source():
    from megatron_autoalign.dpo.task import DPOTask

    sig = _cfg("--reference", "precomputed", "--beta", "0.2", task_cls=DPOTask).task
    assert (sig.reference_source, sig.loss.beta) == ("precomputed", 0.2)
    simpo = _cfg("--loss-type", "simpo", "--reference", "online", task_cls=DPOTask).task
    assert simpo.reference == "online" and simpo.reference_source == "none"  # reference-free: nothing to load
    assert DPOTask(_cfg("--loss-type", "simpo", task_cls=DPOTask)).needs_reference_model is False
    assert not _cfg("--loss-type", "simpo", task_cls=DPOTask).warnings
    assert _cfg("--loss-type", "simpo", "--ref-load", "r", task_cls=DPOTask).warnings == (
        "--loss-type simpo is reference-free: --ref-load without effect",)
