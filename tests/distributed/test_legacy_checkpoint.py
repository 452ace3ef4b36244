"""``--ckpt-format torch``: training writes Megatron-LM's legacy layout (mp_rank_* files, the distributed
optimizer's state in distrib_optim.pt, no torch_dist metadata) and resumes from it exactly: 4 steps straight
== 2 steps, save, resume 2 (DP2 + distributed optimizer + LR warm-up/decay); the converter reads the result."""

import glob
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed.sft_common import base_args, convert, run_all


@pytest.mark.timeout(600)
def test_legacy_format_is_written_and_resumes_exactly(tiny_4layer_dir, tmp_path):
    from megatron_autoalign.training.synthetic import write_synthetic_sft

    data = str(tmp_path / "packed")
    write_synthetic_sft(data, 32, 64, packed=True, seed=4)
    ckpt = convert(tiny_4layer_dir, str(tmp_path / "mg"))
    save = str(tmp_path / "legacy")
    do = ["--use-distributed-optimizer", "--lr-warmup-iters", 2]

    def run(name, *extra):
        return name, base_args(data, ckpt, str(tmp_path / f"{name}.jsonl"), 4, [*do, *extra])

    curves = run_all(tmp_path, 2, dict([
        run("straight"),
        run("first2", "--ckpt-format", "torch", "--save", save, "--exit-interval", 2),
        run("resumed", "--ckpt-format", "torch", "--load", save, "--save", save),
    ]))
    straight, first, resumed = ([r["loss"] for r in curves[k]] for k in ("straight", "first2", "resumed"))
    assert len(straight) == 4 and first == straight[:2]
    assert resumed == straight[2:], (straight, first, resumed)  # bitwise, not approximately
    assert [r["lr"] for r in curves["resumed"]] == [r["lr"] for r in curves["straight"][2:]]

    iter2 = os.path.join(save, "iter_0000002")
    assert sorted(os.listdir(iter2)) == ["mp_rank_00"]  # TP1 PP1: one model file, written by DP rank 0
    assert sorted(os.listdir(os.path.join(iter2, "mp_rank_00"))) == ["distrib_optim.pt", "model_optim_rng.pt"]
    assert not glob.glob(os.path.join(save, "iter_*", "metadata.json"))  # no torch_dist anywhere
    sd = torch.load(os.path.join(iter2, "mp_rank_00", "model_optim_rng.pt"), map_location="cpu", weights_only=False)
    assert sd["iteration"] == 2 and sd["checkpoint_version"] == 3.0 and sd["train_state"]["consumed_samples"] == 8
    assert {"model", "optimizer", "opt_param_scheduler", "rng_state", "args"} <= set(sd)
    # Megatron-LM reads args as a Namespace with its names (model shape, parallel sizes, position)
    a = sd["args"]
    assert (a.num_layers, a.tensor_model_parallel_size, a.consumed_train_samples, a.seq_length) == (4, 1, 8, 64)
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "4"

    # The converter reads a training run's legacy checkpoint like a converted one (Megatron -> HF).
    hf_out = str(tmp_path / "hf_back")
    subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--load-path", save,
                    "--save-path", hf_out, "--mg2hf", "--hf-ckpt-path", tiny_4layer_dir, "--precision", "fp32",
                    "--no-progress"], check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    from safetensors.torch import load_file

    back = {}
    for f in glob.glob(os.path.join(hf_out, "*.safetensors")):
        back.update(load_file(f))
    last = torch.load(os.path.join(save, "iter_0000004", "mp_rank_00", "model_optim_rng.pt"), map_location="cpu",
                      weights_only=False)  # the tracker's iteration
    assert torch.equal(back["model.embed_tokens.weight"], last["model"]["embedding.word_embeddings.weight"].float())
    assert torch.equal(back["model.layers.3.mlp.down_proj.weight"],
                       last["model"]["decoder.layers.3.mlp.linear_fc2.weight"].float())
