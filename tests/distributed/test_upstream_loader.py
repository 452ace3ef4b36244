"""Checkpoints this project writes, loaded by upstream Megatron-LM's OWN code (not a restatement of it).

Opt-in: set ``MEGATRON_LM_PATH`` to a Megatron-LM checkout (run against core_v0.16.1, see
docs/INTERCHANGE.md); skipped otherwise (CI has no Megatron-LM checkout). Each load runs in a fresh process
(``upstream_loader_worker.py``): upstream's ``parse_args``/``validate_args``, its GPT ``model_provider``
(local spec) and ``load_checkpoint`` (``check_checkpoint_args``, strict dist-checkpoint load), under the
Qwen2.5 example's model flags, without ``--finetune``. Ground truth: the HF model (transformers forward).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

MEGATRON_LM = os.environ.get("MEGATRON_LM_PATH", "")
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MEGATRON_LM, "megatron", "training", "checkpointing.py")),
    reason="set MEGATRON_LM_PATH to a Megatron-LM checkout to run upstream's own loader")

WORKER = os.path.join(os.path.dirname(__file__), "upstream_loader_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGITS_TOL = 1e-5  # fp32 both sides; measured 3e-7


def load_with_upstream(hf_dir: str, load_dir: str, out: str, *extra: str) -> dict:
    path = os.pathsep.join(p for p in (MEGATRON_LM, REPO, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, WORKER, hf_dir, load_dir, out, *extra], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f)


def assert_is_the_hf_model(result: dict, iteration: int) -> None:
    assert result["iteration"] == iteration
    assert result["compared"] >= 8 and result["max_weight_diff"] == 0.0
    assert result["max_logits_diff"] < LOGITS_TOL, result


@pytest.fixture(scope="module")
def release(tiny_untied_dir, tmp_path_factory):
    from tests.distributed.sft_common import convert

    return convert(tiny_untied_dir, str(tmp_path_factory.mktemp("upstream_release") / "mg"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", [(), ("--use-checkpoint-args",)], ids=["flags", "use_checkpoint_args"])
def test_converted_release_loads_with_upstream_load_checkpoint(release, tiny_untied_dir, tmp_path, mode):
    result = load_with_upstream(tiny_untied_dir, release, str(tmp_path / "r.json"), *mode)
    assert_is_the_hf_model(result, iteration=0)
    assert result["untied"] and result["num_layers"] == 3 and result["add_position_embedding"] is True


@pytest.mark.timeout(900)
def test_use_checkpoint_args_does_not_copy_norm_epsilon(release, tiny_untied_dir, tmp_path):
    """Upstream's load_args_from_checkpoint has no --norm-epsilon: without the flag the model gets its 1e-5,
    not Qwen's 1e-6 (README: pass --norm-epsilon). This shows the check above can fail."""
    result = load_with_upstream(tiny_untied_dir, release, str(tmp_path / "r.json"), "--use-checkpoint-args",
                                "--no-norm-epsilon")
    assert result["layernorm_epsilon"] == 1e-5 and result["max_weight_diff"] == 0.0
    assert result["max_logits_diff"] > 1e-4


@pytest.fixture(scope="module")
def trained(tiny_tied_dir, tmp_path_factory):
    """A training iter_N from our SFT trainer (2 steps, 1 process), and its HF export as ground truth."""
    from megatron_autoalign.training.synthetic import write_synthetic_sft
    from tests.distributed.sft_common import base_args, convert, run_all

    tmp = tmp_path_factory.mktemp("upstream_iter")
    ckpt = convert(tiny_tied_dir, str(tmp / "mg"))
    data = str(tmp / "packed")
    write_synthetic_sft(data, 16, 64, packed=True, seed=0)
    save = str(tmp / "save")
    run_all(tmp, 1, {"sft": base_args(data, ckpt, str(tmp / "sft.jsonl"), 2, ("--save", save))})
    hf = str(tmp / "hf")
    subprocess.run([sys.executable, "-m", "megatron_autoalign.checkpoint.convert", "--mg2hf", "--load-path", save,
                    "--save-path", hf, "--hf-ckpt-path", tiny_tied_dir, "--precision", "fp32",
                    "--no-progress"],
                   check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return save, hf


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", [(), ("--use-checkpoint-args",)], ids=["flags", "use_checkpoint_args"])
def test_training_iter_n_loads_with_upstream_load_checkpoint(trained, tiny_tied_dir, tmp_path, mode):
    save, hf = trained
    result = load_with_upstream(hf, save, str(tmp_path / "r.json"), *mode)
    assert_is_the_hf_model(result, iteration=2)  # the trained weights, as our MG->HF export reads them
    assert not result["untied"] and result["num_layers"] == 2
    from tests.unit.test_upstream_interchange import hf_tensors

    # training moved the weights, so matching the export (not the converted model) can fail
    assert not torch.equal(hf_tensors(hf)["model.norm.weight"], hf_tensors(tiny_tied_dir)["model.norm.weight"])
