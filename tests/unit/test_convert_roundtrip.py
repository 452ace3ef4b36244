"""HF -> Megatron -> HF is bit-exact (tiny tied and untied models, fp32 and bf16, TP 1/2 x PP 1/2/3, both
layouts), and the written Megatron checkpoints have the layout Megatron-LM expects."""

import glob
import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_autoalign.checkpoint.convert import main as convert
from tests.conftest import _cached

from megatron_autoalign.testing.tiny_models import make_tiny_qwen2


@pytest.fixture(scope="session")
def models(tiny_4layer_dir, tiny_untied_dir):
    """fp32 fixtures plus bf16 twins (a bf16 source makes a bf16 round trip a true bit-exact check)."""
    return {
        ("tied", "fp32"): tiny_4layer_dir,  # 4 layers: PP=3 is an uneven 2/1/1 split
        ("untied", "fp32"): tiny_untied_dir,  # 3 layers: PP=2 is an uneven 2/1 split
        ("tied", "bf16"): make_tiny_qwen2(_cached("tiny_4layer_bf16"), tied=True, num_layers=4, num_kv_heads=4,
                                          seed=2, dtype=torch.bfloat16),
        ("untied", "bf16"): make_tiny_qwen2(_cached("tiny_untied_bf16"), tied=False, num_layers=3, seed=1,
                                            dtype=torch.bfloat16),
    }


def hf_tensors(path):
    out = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        out.update(load_file(f))
    return out


def round_trip(src, tmp_path, fmt, tp, pp, precision, use_te="true"):
    mg, back = tmp_path / "mg", tmp_path / "hf"
    assert convert(["--load-path", src, "--save-path", str(mg), "--ckpt-format", fmt, "--tp", str(tp), "--pp", str(pp),
                    "--precision", precision, "--use-te", use_te, "--no-progress"]) == 0
    assert convert(["--mg2hf", "--load-path", str(mg), "--save-path", str(back), "--hf-ckpt-path", src,
                    "--precision", precision, "--max-shard-size", "10MB", "--no-progress"]) == 0
    return mg, back


CASES = [("torch", tp, pp) for tp in (1, 2) for pp in (1, 2, 3)] + [("torch_dist", 1, 1), ("torch_dist", 2, 3)]


@pytest.mark.parametrize("tied", ["tied", "untied"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("fmt,tp,pp", CASES)
def test_round_trip_bit_exact(models, tmp_path, tied, precision, fmt, tp, pp):
    src = models[(tied, precision)]
    mg, back = round_trip(src, tmp_path, fmt, tp, pp, precision, use_te="true" if tp == 1 else "false")
    a, b = hf_tensors(src), hf_tensors(back)
    assert a.keys() == b.keys()  # tied stays tied: no lm_head.weight written
    assert ("lm_head.weight" in b) == (tied == "untied")
    for k in a:
        assert b[k].dtype == a[k].dtype and torch.equal(a[k], b[k]), k
    assert len(glob.glob(str(back / "model-*-of-*.safetensors"))) > 1  # sharded + index
    assert (back / "model.safetensors.index.json").is_file() and (back / "generation_config.json").is_file()
    assert (mg / "latest_checkpointed_iteration.txt").read_text() == "release"
    if fmt == "torch":
        names = sorted(os.listdir(mg / "release"))
        assert names == [f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") for t in range(tp) for p in range(pp)]


def test_hf_files_load_with_from_pretrained(models, tmp_path):
    from transformers import AutoModelForCausalLM

    src = models[("tied", "fp32")]
    _, back = round_trip(src, tmp_path, "torch_dist", 1, 1, "fp32")
    model = AutoModelForCausalLM.from_pretrained(str(back))
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.tensor([[1, 2, 3, 4]])
    ref = AutoModelForCausalLM.from_pretrained(src)
    assert torch.equal(model(ids).logits, ref(ids).logits)


def test_torch_dist_common_state_and_legacy_rank_file(models, tmp_path):
    from megatron.core import dist_checkpointing

    src = models[("untied", "fp32")]
    assert convert(["--load-path", src, "--save-path", str(tmp_path / "d"), "--tp", "2", "--pp", "2",
                    "--precision", "fp32", "--no-progress"]) == 0
    common = dist_checkpointing.load_common_state_dict(str(tmp_path / "d" / "release"))
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0
    assert common["args"].tensor_model_parallel_size == 2 and common["args"].num_layers == 3
    assert (tmp_path / "d" / "config.json").is_file()  # config + tokenizer files travel with the checkpoint
    meta = dist_checkpointing.load_tensors_metadata(str(tmp_path / "d" / "release"))
    assert tuple(meta["decoder.layers.mlp.linear_fc1.weight"].global_shape) == (3, 256, 64)
    assert "output_layer.weight" in meta

    assert convert(["--load-path", src, "--save-path", str(tmp_path / "l"), "--ckpt-format", "torch", "--tp", "2",
                    "--pp", "2", "--precision", "fp32", "--use-te", "false", "--no-progress"]) == 0
    last = torch.load(tmp_path / "l/release/mp_rank_01_001/model_optim_rng.pt", weights_only=False)
    assert last["checkpoint_version"] == 3.0 and last["iteration"] == 0
    model = last["model"]
    # stage 1 holds global layer 2 as its local layer 0, TP-local shapes, local-spec names
    assert "decoder.layers.0.input_layernorm.weight" in model and "decoder.layers.1.input_layernorm.weight" not in model
    assert tuple(model["decoder.layers.0.mlp.linear_fc1.weight"].shape) == (128, 64)
    assert tuple(model["output_layer.weight"].shape) == (151936 // 2, 64)
    assert "embedding.word_embeddings.weight" not in model


def test_tied_pp_last_stage_keeps_embedding_copy(models, tmp_path):
    src = models[("tied", "fp32")]
    assert convert(["--load-path", src, "--save-path", str(tmp_path / "l"), "--ckpt-format", "torch", "--pp", "2",
                    "--precision", "fp32", "--no-progress"]) == 0
    first = torch.load(tmp_path / "l/release/mp_rank_00_000/model_optim_rng.pt", weights_only=False)["model"]
    last = torch.load(tmp_path / "l/release/mp_rank_00_001/model_optim_rng.pt", weights_only=False)["model"]
    assert torch.equal(first["embedding.word_embeddings.weight"], last["output_layer.weight"])
    assert "decoder.layers.1.self_attention.linear_qkv.layer_norm_weight" in last  # TE spelling (USE_TE=true)
