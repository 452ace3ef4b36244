"""Training flags (Megatron-LM names), derived sizes, data order."""

import pytest

from megatron_autoalign.training.arguments import ArgumentError
from megatron_autoalign.training.config import parse_run_config
from megatron_autoalign.training.data_order import SampleOrder, microbatch_indices


def _args(*argv, world=8):
    return parse_run_config(["--data-path", "d", "--hf-config", "/nonexistent", *argv], world)


def test_megatron_flag_names_and_derived_sizes():
    a = _args("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--sequence-parallel",
              "--micro-batch-size", "2", "--global-batch-size", "16", "--dataset", "mmap", "--split", "98,2,0",
              "--patch-tokenizer-type", "Qwen2Tokenizer", "--extra-vocab-size", "293")
    assert a.parallel.data_parallel_size == 2 and a.training.num_microbatches == 4 and a.parallel.sequence_parallel
    assert a.data.split_fractions == pytest.approx([0.98, 0.02, 0.0])
    assert _args().training.global_batch_size == 8  # default: micro x DP


@pytest.mark.parametrize("argv,fragment", [
    (["--tensor-model-parallel-size", "3"], "not divisible by TP(3)"),
    (["--micro-batch-size", "2", "--global-batch-size", "12"], "--global-batch-size 12 is not divisible"),
    (["--bf16", "--fp16"], "mutually exclusive"),
    (["--dataset", "LLama-SFT-Raw"], "only 'mmap'"),
    (["--split", "a,b"], "--split 'a,b': expected non-negative weights"),
    (["--pretrained-checkpoint", "/no/such/mg"], "--pretrained-checkpoint /no/such/mg: the path does not exist"),
    (["--keep-last-checkpoints", "0"], "--keep-last-checkpoints must be at least 1"),
])
def test_bad_combinations_fail_with_one_line(argv, fragment):
    with pytest.raises((ArgumentError, ValueError)) as e:
        _args(*argv)
    assert "\n" not in str(e.value)
    assert fragment in str(e.value)


def test_sample_order_is_a_pure_function_of_position():
    o = SampleOrder(10, seed=3)
    first = o.indices(0, 25)  # 2.5 epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]  # a new permutation each epoch
    assert SampleOrder(10, seed=3).indices(13, 7) == first[13:20]  # resume mid-epoch
    assert SampleOrder(10, seed=3, shuffle=False).indices(8, 4) == [8, 9, 0, 1]


def test_microbatches_follow_megatron_order():
    g = list(range(8))  # mbs 2, DP 2 -> 2 micro-batches per rank
    assert microbatch_indices(g, 2, 2, 0) == [[0, 1], [4, 5]]
    assert microbatch_indices(g, 2, 2, 1) == [[2, 3], [6, 7]]


def test_recompute_swiglu_takes_all_or_a_layer_count():
    from megatron_autoalign.training import arguments

    parse = arguments.build_parser().parse_args
    base = ["--data-path", "x", "--hf-config", "y"]
    assert parse(base).recompute_swiglu is False
    assert parse(base + ["--recompute-swiglu"]).recompute_swiglu is True
    assert parse(base + ["--recompute-swiglu", "14"]).recompute_swiglu == 14
    for bad in ("0", "-2", "half"):
        with pytest.raises(ArgumentError):  # one line, not argparse's usage + exit
            parse(base + ["--recompute-swiglu", bad])


def test_overlap_param_gather_needs_the_distributed_optimizer():
    assert _args("--use-distributed-optimizer", "--overlap-param-gather").parallel.overlap_param_gather
    with pytest.raises(ArgumentError, match="--overlap-param-gather needs --use-distributed-optimizer"):
        _args("--overlap-param-gather")
