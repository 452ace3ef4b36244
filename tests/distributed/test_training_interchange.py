"""A training checkpoint (iter_N, saved at DP2 with the distributed optimizer) holds what Megatron-LM
core_v0.16.1's ``load_checkpoint`` (megatron/training/checkpointing.py) reads, and resumes here exactly.

Upstream reads at the top level ``args`` (a namespace: getattr), ``iteration``, ``checkpoint_version``,
``content_metadata`` (the optimizer's sharding type), requests the model's sharded state dict (a TE-spec
model also ``decoder.final_layernorm._extra_state``) under strict loading, and ``rng_state`` as one object
of global shape (PP, TP) holding a list of states with keys random_rng_state, np_rng_state,
torch_rng_state, rng_tracker_states (get_rng_state).
"""

import argparse

import pytest
import torch

from tests.distributed.sft_common import base_args, convert, read_log, run_all


@pytest.fixture(scope="module")
def runs(tiny_4layer_dir, tmp_path_factory):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    tmp = tmp_path_factory.mktemp("training_interchange")
    ckpt = convert(tiny_4layer_dir, str(tmp / "mg"))
    data = str(tmp / "packed")
    write_synthetic_sft(data, 64, 64, packed=True, seed=0)
    save = str(tmp / "save")
    do = ("--use-distributed-optimizer",)
    curves = run_all(tmp, 2, {
        "straight": base_args(data, ckpt, str(tmp / "straight.jsonl"), 4, do),
        "first": base_args(data, ckpt, str(tmp / "first.jsonl"), 4, (*do, "--save", save, "--exit-interval", 2)),
        "resumed": base_args(data, ckpt, str(tmp / "resumed.jsonl"), 4, (*do, "--load", save)),
    })
    return tmp, save, curves


@pytest.mark.timeout(900)
def test_resume_with_upstream_rng_layout_is_exact(runs):
    _, _, curves = runs
    straight = [r["loss"] for r in curves["straight"]]
    assert [r["loss"] for r in curves["first"]] + [r["loss"] for r in curves["resumed"]] == straight


@pytest.mark.timeout(900)
def test_iter_n_has_what_upstream_load_checkpoint_reads(runs, tiny_4layer_dir):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.validation import StrictHandling

    from megatron_autoalign.runtime import destroy_distributed
    from tests.unit.test_upstream_interchange import hf_tensors, stock_gpt_model, te_request

    _, save, _ = runs
    it = f"{save}/iter_0000002"
    common = dist_checkpointing.load_common_state_dict(it)
    args = common["args"]
    assert isinstance(args, argparse.Namespace)
    assert common["iteration"] == 2 and common["checkpoint_version"] == 3.0
    assert common["content_metadata"]["distrib_optim_sharding_type"] == "dp_reshardable"
    # check_checkpoint_args' fields and the layout load_checkpoint compares
    assert (args.num_layers, args.hidden_size, args.num_attention_heads) == (4, 64, 4)
    assert args.add_position_embedding is True
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (1, 1)
    assert args.world_size == 2 and args.data_parallel_size == 2 and args.iteration == 2
    assert args.consumed_train_samples == 8 and args.no_save_optim is False
    try:
        model = stock_gpt_model(tiny_4layer_dir)  # one process, TP1: a different layout than the save
        before = model.decoder.final_layernorm.weight.detach().clone()
        rng = ShardedObject("rng_state", None, (1, 1), (0, 0), replica_id=0)
        loaded = dist_checkpointing.load({"model": te_request(model), "rng_state": rng}, it,
                                         strict=StrictHandling.ASSUME_OK_UNEXPECTED)
        loaded["model"].pop("decoder.final_layernorm._extra_state")
        model.load_state_dict(loaded["model"], strict=True)
        after = model.decoder.final_layernorm.weight.detach()
        converted = hf_tensors(tiny_4layer_dir)["model.norm.weight"]
        assert not torch.equal(before, after) and not torch.equal(converted, after)  # the trained weights
        assert (after - converted).abs().max() < 0.05  # ... two small steps away from the converted ones
        states = loaded["rng_state"]
        assert len(states) == 2  # one per DP rank; upstream (no --data-parallel-random-init) reads entry 0
        assert {"random_rng_state", "np_rng_state", "torch_rng_state", "rng_tracker_states"} <= set(states[0])
    finally:
        destroy_distributed()
