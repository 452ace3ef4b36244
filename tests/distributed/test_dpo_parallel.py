"""DPO through the real training loop at several layouts, against an independent HF ground truth.

One torchrun launch (4 CPU processes, gloo) runs every configuration; the assertions read the runs'
JSON logs. Ground truth: transformers' Qwen2ForCausalLM on each sequence alone (fp32, log_softmax,
gather; tests/workers/dpo_common.py), then the papers' formulas (tests/unit/test_dpo_losses.py).
Every global batch holds ALL pairs (full-batch steps), so layouts that group pairs differently
(packed rows, DP ranks) must still follow the same trajectory.
Tolerance: |a - b| <= 1e-5 * max(1, |b|) (fp32; summed log-probs are O(100)).
"""
import json
import os

import numpy as np
import pytest

from tests.distributed.launch import torchrun
from tests.unit.test_dpo_losses import expected
from tests.workers.dpo_common import VOCAB, convert, hf_sequence_logps, tiny_qwen2_small_vocab, trained_counts

WORKER = os.path.join(os.path.dirname(__file__), "..", "workers", "dpo_runs.py")
CACHE = os.environ.get("MA_TEST_CACHE", "/tmp/megatron_autoalign_test_cache")
SEQ, PAIRS, ITERS = 24, 16, 3
TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2", "--sequence-parallel"]
CP2TP2 = ["--tensor-model-parallel-size", "2", "--context-parallel-size", "2", "--sequence-parallel"]
LOSSES = {  # name -> (flags, expected() keyword arguments)
    "cdpo": (["--label-smoothing", "0.1"], {"kind": "sigmoid", "beta": 0.1, "eps": 0.1}),
    "ipo": (["--loss-type", "ipo", "--beta", "0.5"], {"kind": "ipo", "beta": 0.5}),
    "hinge": (["--loss-type", "hinge", "--beta", "0.05"], {"kind": "hinge", "beta": 0.05}),
    "rpo": (["--loss-type", "rpo", "--rpo-alpha", "0.5"], {"kind": "rpo", "beta": 0.1, "alpha": 0.5}),
    "simpo": (["--loss-type", "simpo", "--beta", "2.0", "--simpo-gamma", "0.4"], {"kind": "simpo", "beta": 2.0, "gamma": 0.4}),
}


def close(a, b, tol=1e-5):
    return abs(a - b) <= tol * max(1.0, abs(b))


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory):
    from megatron_autoalign.dpo.dataset import PreferenceDataset
    from megatron_autoalign.dpo.synthetic import make_pairs, pairs_in_file_order, write_pairs

    d = tmp_path_factory.mktemp("dpo")
    root = os.path.join(CACHE, "dpo_small_vocab")
    models = {}
    for name, seed in (("policy", 11), ("reference", 12)):
        hf = tiny_qwen2_small_vocab(os.path.join(root, f"{name}_hf"), seed)
        models[name] = (hf, convert(hf, os.path.join(root, f"{name}_mg")))
    pairs = make_pairs(PAIRS, SEQ, VOCAB, seed=5)
    write_pairs(str(d / "u"), pairs, SEQ, packed=False, vocab=VOCAB)
    write_pairs(str(d / "p"), pairs, SEQ, packed=True, vocab=VOCAB)
    rows_packed = len(PreferenceDataset(str(d / "p")))
    assert rows_packed < PAIRS  # packing really put several pairs in a row

    def argv(name, data, layout, iters, extra=(), mbs=2, gbs=PAIRS):
        return ["--data-path", str(d / data), "--pretrained-checkpoint", models["policy"][1],
                "--ref-load", models["reference"][1], "--hf-config", models["policy"][0], "--no-shuffle",
                "--lr", "1e-3", "--lr-decay-style", "constant", "--train-iters", str(iters),
                "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
                "--log-json", str(d / f"{name}.json"), *layout, *extra]

    runs = {
        "tp1": argv("tp1", "u", [], ITERS),  # DP 4
        "tp2pp2": argv("tp2pp2", "u", TP2PP2, ITERS),
        "tp2pp2_packed": argv("tp2pp2_packed", "p", TP2PP2, ITERS, mbs=1, gbs=rows_packed),
        "cp2tp2": argv("cp2tp2", "u", CP2TP2, ITERS),
        "cp2tp2_packed": argv("cp2tp2_packed", "p", CP2TP2, ITERS, mbs=1, gbs=rows_packed),
    }
    spec = [{"kind": "train", "argv": a} for a in runs.values()]
    spec.append({"kind": "score", "argv": argv("score", "u", TP2PP2, 1)})
    spec.append({"kind": "train", "argv": argv("tp2pp2_precomputed", "u", TP2PP2, ITERS, ["--reference", "precomputed"])})
    for name, (flags, _) in LOSSES.items():
        spec.append({"kind": "train", "argv": argv(name, "u", TP2PP2, 1, flags)})
    (d / "spec.json").write_text(json.dumps(spec))
    torchrun(WORKER, 4, d / "spec.json", timeout=900)

    logs = {}
    for name in list(runs) + ["tp2pp2_precomputed"] + list(LOSSES):
        logs[name] = [json.loads(line) for line in (d / f"{name}.json").read_text().splitlines()]
    file_pairs = pairs_in_file_order(str(d / "u"))
    truth = {"policy": hf_sequence_logps(models["policy"][0], file_pairs),
             "reference": hf_sequence_logps(models["reference"][0], file_pairs),
             "lengths": trained_counts(file_pairs)}
    return {"logs": logs, "truth": truth, "ref_file": str(d / "u_ref_logps.npy"), "manifest": str(d / "u_manifest.json")}


def truth_metrics(truth, kind="sigmoid", beta=0.1, **kw) -> dict:
    pol, ref, n = truth["policy"], truth["reference"], truth["lengths"]
    rows = [expected(kind, beta, pol[k, 0].item(), pol[k, 1].item(), ref[k, 0].item(), ref[k, 1].item(),
                     n[k, 0].item(), n[k, 1].item(), **kw) for k in range(len(pol))]
    loss, rc, rr = (np.array(x) for x in zip(*rows))
    return {"loss": loss.mean(), "rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
            "rewards/margin": (rc - rr).mean(), "rewards/accuracy": (rc > rr).mean(),
            "logps/chosen": pol[:, 0].mean().item(), "logps/rejected": pol[:, 1].mean().item()}


def assert_metrics(log: dict, want: dict, what: str):
    for k, v in want.items():
        assert close(log[k], v), f"{what}: {k} = {log[k]} but the HF ground truth gives {v}"


def test_sigmoid_dpo_matches_hf_ground_truth_at_every_layout(dpo_runs):
    want = truth_metrics(dpo_runs["truth"])
    assert 0 < want["rewards/accuracy"] < 1 and abs(want["loss"] - np.log(2)) > 1e-3  # a non-degenerate batch
    for name in ("tp1", "tp2pp2", "tp2pp2_packed", "cp2tp2", "cp2tp2_packed", "tp2pp2_precomputed"):
        assert_metrics(dpo_runs["logs"][name][0], want, name)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_family_matches_hf_ground_truth(dpo_runs, name):
    kw = dict(LOSSES[name][1])
    assert_metrics(dpo_runs["logs"][name][0], truth_metrics(dpo_runs["truth"], **kw), name)


@pytest.mark.parametrize("name", ["tp2pp2", "tp2pp2_packed", "cp2tp2", "cp2tp2_packed", "tp2pp2_precomputed"])
def test_training_trajectory_matches_tp1(dpo_runs, name):
    """Gradients, not just forward values: after optimizer steps every layout still agrees with TP1."""
    base, other = dpo_runs["logs"]["tp1"], dpo_runs["logs"][name]
    assert len(base) == len(other) == ITERS
    assert base[-1]["loss"] < base[0]["loss"] - 1e-3  # the steps changed the model
    for it, (a, b) in enumerate(zip(base, other), start=1):
        for k in ("loss", "rewards/margin", "logps/chosen", "logps/rejected"):
            assert close(b[k], a[k], 1e-4), f"{name} iteration {it}: {k} = {b[k]}, TP1 gives {a[k]}"
        assert close(b["grad_norm"], a["grad_norm"], 1e-4), f"{name} iteration {it}: grad norm"


def test_precomputed_reference_file_equals_hf_reference(dpo_runs):
    ref = np.load(dpo_runs["ref_file"])
    want = dpo_runs["truth"]["reference"].numpy()
    assert ref.shape == want.shape and ref.dtype == np.float32
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-5)
    entry = json.load(open(dpo_runs["manifest"]))["reference"]
    assert entry["num_pairs"] == len(want) and entry["tensor_model_parallel_size"] == 2
    assert entry["checkpoint"].endswith("reference_mg") and len(entry["sha256"]) == 64
