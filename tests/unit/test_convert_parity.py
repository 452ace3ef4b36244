"""Converted checkpoints compute what HF computes (fp32, CPU, TP1 single process: max-abs < 1e-4),
load into the trainer from any legacy TP/PP, and bad input ends with one line and exit code 2."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_autoalign.checkpoint import load_megatron_checkpoint_weights
from megatron_autoalign.checkpoint.convert import main as convert
from megatron_autoalign.checkpoint.verify import verify

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "toolkits", "model_checkpoints_convertor", "qwen", "hf2mcore_qwen2.5_convertor.sh")


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


@pytest.mark.parametrize("fixture", ["tiny_4layer_dir", "tiny_untied_dir"])
@pytest.mark.parametrize("fmt,tp,pp", [("torch_dist", 1, 1), ("torch", 2, 2)])
def test_logits_parity_tp1(request, tmp_path, fixture, fmt, tp, pp):
    src = request.getfixturevalue(fixture)
    assert convert(["--load-path", src, "--save-path", str(tmp_path / "mg"), "--ckpt-format", fmt, "--tp", str(tp),
                    "--pp", str(pp), "--precision", "fp32", "--no-progress"]) == 0
    max_abs, cosine = verify(src, str(tmp_path / "mg"))
    assert max_abs < 1e-4 and cosine > 0.99999


def _tp1_model(hf_dir):
    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf

    ensure_process_group()
    cfg = load_hf_config(hf_dir)
    return build_gpt_model(cfg, transformer_config_from_hf(cfg, torch.float32))


def test_legacy_tp2pp2_loads_into_tp1_trainer(tiny_untied_dir, tmp_path):
    from megatron_autoalign.checkpoint.sharded import load_hf_weights_into_model

    assert convert(["--load-path", tiny_untied_dir, "--save-path", str(tmp_path / "l"), "--ckpt-format", "torch",
                    "--tp", "2", "--pp", "2", "--precision", "fp32", "--use-te", "false", "--no-progress"]) == 0
    model, reference = _tp1_model(tiny_untied_dir), _tp1_model(tiny_untied_dir)
    assert load_megatron_checkpoint_weights([model], str(tmp_path / "l")) == "torch"
    load_hf_weights_into_model(reference, tiny_untied_dir)
    got, want = model.state_dict(), reference.state_dict()
    tensors = [k for k, v in want.items() if torch.is_tensor(v)]
    assert len(tensors) == 3 * 7 + 3  # layers + embedding, final norm, output layer
    for k in tensors:
        assert torch.equal(got[k], want[k]), k


def test_legacy_keys_equal_model_state_dict(tiny_4layer_dir, tmp_path):
    assert convert(["--load-path", tiny_4layer_dir, "--save-path", str(tmp_path / "l"), "--ckpt-format", "torch",
                    "--precision", "fp32", "--use-te", "false", "--no-progress"]) == 0
    saved = torch.load(tmp_path / "l/release/mp_rank_00/model_optim_rng.pt", weights_only=False)["model"]
    assert list(saved) == list(_tp1_model(tiny_4layer_dir).state_dict())  # strict load_state_dict works


def _run(args, cwd=None):
    # a fresh process: no rendezvous variables left in os.environ by in-process conversions above
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], PYTHONWARNINGS="ignore")
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env)


def test_script_wrapper_both_directions_and_verify(tiny_4layer_dir, tmp_path):
    mg, back = tmp_path / "mg", tmp_path / "hf"
    p = _run(["bash", SCRIPT, "auto", tiny_4layer_dir, str(mg), "2", "2", "fp32", "true", "false"], cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    p = _run(["bash", SCRIPT, "auto", str(mg), str(back), "2", "2", "fp32", "true", "true", tiny_4layer_dir], cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (back / "model.safetensors.index.json").is_file()
    p = _run([sys.executable, "-m", "megatron_autoalign.checkpoint.verify", "--hf-path", str(back), "--megatron-path", str(mg)])
    assert p.returncode == 0, p.stderr[-3000:]
    line = [l for l in p.stdout.splitlines() if l.startswith("verify:")][0]
    assert float(line.split("max-abs diff ")[1].split(",")[0]) < 1e-4
    p = _run(["bash", SCRIPT, "auto", tiny_4layer_dir, str(mg), "1", "1", "fp32", "true", "false"])
    assert p.returncode == 2 and "destination exists and is not empty" in p.stderr


def _error(args, capsys) -> str:
    assert convert(args + ["--no-progress"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_errors_are_one_line_exit_2(tiny_untied_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_untied_dir, bad)
    out = str(tmp_path / "out")
    # TP must divide the KV groups (2 here)
    assert "TP=4 must divide the number of KV heads (2)" in _error(["--load-path", tiny_untied_dir, "--save-path", out, "--tp", "4"], capsys)
    assert "TP and PP must be at least 1 (got TP=0" in _error(["--load-path", tiny_untied_dir, "--save-path", out, "--tp", "0"], capsys)
    assert "PP=5 is larger than the number of layers (3)" in _error(["--load-path", tiny_untied_dir, "--save-path", out, "--pp", "5"], capsys)
    assert "model size 1.5B does not match config.json" in _error(["--load-path", tiny_untied_dir, "--save-path", out, "--model-size", "1.5B"], capsys)
    # a tensor whose shape disagrees with config.json: no tracker is left behind
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    msg = _error(["--load-path", str(bad), "--save-path", out], capsys)
    assert "source has shape" in msg and str(bad) in msg
    assert not os.path.exists(os.path.join(out, "latest_checkpointed_iteration.txt"))
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    assert "unsupported architecture" in _error(["--load-path", str(bad), "--save-path", str(tmp_path / "o2")], capsys)
    (bad / "config.json").write_text(json.dumps(cfg))
    shard = next(f for f in os.listdir(bad) if f.endswith(".safetensors"))
    (bad / shard).write_bytes((bad / shard).read_bytes()[:-1000])
    assert "truncated shard (size mismatch)" in _error(["--load-path", str(bad), "--save-path", str(tmp_path / "o3")], capsys)
    os.remove(bad / shard)
    assert "model.safetensors" in _error(["--load-path", str(bad), "--save-path", str(tmp_path / "o4")], capsys)
    assert "destination exists and is not empty" in _error(["--load-path", tiny_untied_dir, "--save-path", str(bad)], capsys)
    # an output folder that cannot be written (here: under a file; a read-only folder takes the same path)
    (tmp_path / "afile").write_text("")
    assert _error(["--load-path", tiny_untied_dir, "--save-path", str(tmp_path / "afile" / "mg")], capsys) == (
        f"error: {tmp_path}/afile/mg: cannot write the converted checkpoint here (Not a directory); choose another directory")
