"""bench/summarize.py: repeats grouped by system and shape, ratio to the peer and data-parallel efficiency
worked out by hand from made-up bench_sft JSON files; other JSON files skipped and named."""

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)
from summarize import load_rows, summarize  # noqa: E402

PEER = "hf_transformers_sdpa_fp32params_bf16autocast_fusedadamw"


def _write(folder, name, gpus, results, extra="", tp=1, size="1.5B"):
    args = {"model_size": size, "seq_length": 8192, "micro_batch_size": 1, "gpus": gpus, "tp": tp, "pp": 1,
            "extra": extra}
    (folder / name).write_text(json.dumps({"gpu": "test", "args": args, "results": results}))


def _ours(system, tps, gpus=1, mem=40.0):
    return {"system": system, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / gpus, "mfu": 0.5,
            "peak_memory_gb": mem}


@pytest.fixture
def folder(tmp_path):
    _write(tmp_path, "a.json", 1, [_ours("ours_1", 45000.0), {"system": PEER, "tokens_per_s": 30000.0,
                                                              "mfu": 0.3, "peak_memory_gb": 64.0}])
    _write(tmp_path, "b.json", 1, [_ours("ours_1", 39000.0), {"system": PEER, "tokens_per_s": 29000.0,
                                                              "mfu": 0.3, "peak_memory_gb": 64.0}])
    _write(tmp_path, "c.json", 1, [_ours("ours_1", 48000.0, mem=46.6)])
    _write(tmp_path, "d.json", 2, [_ours("ours_2", 88000.0, gpus=2)])
    _write(tmp_path, "e.json", 2, [_ours("ours_2_overlap", 80000.0, gpus=2)], extra="--overlap-param-gather")
    _write(tmp_path, "f.json", 2, [_ours("ours_tp2", 20000.0, gpus=2)], tp=2)
    _write(tmp_path, "g.json", 2, [_ours("ours_2", 10000.0, gpus=2)], size="7B")
    (tmp_path / "step.json").write_text(json.dumps({"tokens_per_s": 1.0}))
    (tmp_path / "broken.json").write_text("{")
    return tmp_path


def test_groups_ratios_and_efficiency(folder):
    rows, skipped = load_rows(str(folder))
    assert sorted(skipped) == ["broken.json", "step.json"]
    table = {(r["shape"].split()[0], r["system"]): r for r in summarize(rows)}
    one = table[("1.5B", "ours_1")]
    assert (one["runs"], one["tokens_per_s_per_gpu_median"], one["min"], one["max"]) == (3, 45000.0, 39000.0, 48000.0)
    assert one["peak_memory_gb"] == 46.6
    assert one["ratio_to_peer"] == pytest.approx(45000.0 / 29500.0)  # median of the two peer runs
    two = table[("1.5B", "ours_2")]
    assert two["per_gpu_efficiency"] == pytest.approx(44000.0 / 45000.0)
    overlap = table[("1.5B", "ours_2_overlap")]  # no 1-GPU run with its flag: compared with the plain one
    assert overlap["per_gpu_efficiency"] == pytest.approx(40000.0 / 45000.0)
    assert overlap["efficiency_base_extra"] == ""
    assert "per_gpu_efficiency" not in table[("1.5B", "ours_tp2")]  # tensor parallel is not DP scaling
    seven = table[("7B", "ours_2")]  # other shape: neither the 1.5B peer nor the 1.5B single-GPU run apply
    assert "ratio_to_peer" not in seven and "per_gpu_efficiency" not in seven


def test_cli_prints_table_and_names_skips(folder):
    out = subprocess.run([sys.executable, os.path.join(BENCH, "summarize.py"), str(folder)], check=True,
                         capture_output=True, text=True).stdout
    assert "skipped 2 JSON file(s)" in out and "1.53x" in out and "97.8%" in out


def test_cli_rejects_a_folder_without_results(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(BENCH, "summarize.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "no bench JSON results" in p.stderr


def test_component_step_and_dpo_files_are_summarised(tmp_path):
    """bench_model_step files get their own shape (the HF peer of the same file is their peer); bench_dpo
    rows are compared with TRL's run with the same reference mode."""
    step_args = {"model_size": "1.5B", "seq_length": 8192, "micro_batch_size": 1, "tp": 1, "packed_docs": 1}
    for i, (ours, peer) in enumerate([(37000.0, 30000.0), (36000.0, 29000.0), (39000.0, 31000.0)]):
        (tmp_path / f"step{i}.json").write_text(json.dumps({"args": step_args, "results": [
            _ours("ours_local_spec_tp1", ours), {"system": PEER, "tokens_per_s": peer, "peak_memory_gb": 64.0}]}))
    dpo_args = {"model_size": "1.5B", "seq_len": 4096, "pairs": 64}
    (tmp_path / "dpo.json").write_text(json.dumps({"args": dpo_args, "results": [
        _ours("ours_dpo_online_rows8192", 27000.0), _ours("ours_dpo_precomputed_rows8192", 36000.0),
        {"system": "trl_dpotrainer_online", "tokens_per_s": 9000.0, "peak_memory_gb": 50.0},
        {"system": "trl_dpotrainer_precomputed", "tokens_per_s": 12000.0, "peak_memory_gb": 40.0}]}))
    rows, skipped = load_rows(str(tmp_path))
    assert skipped == []
    table = {(r["shape"], r["system"]): r for r in summarize(rows)}
    step = table[("1.5B seq 8192 mb 1 step", "ours_local_spec_tp1")]
    assert (step["runs"], step["tokens_per_s_per_gpu_median"], step["min"], step["max"]) == (3, 37000.0, 36000.0, 39000.0)
    assert step["ratio_to_peer"] == pytest.approx(37000.0 / 30000.0)
    assert table[("DPO 1.5B 2x4096", "ours_dpo_online_rows8192")]["ratio_to_peer"] == pytest.approx(3.0)
    assert table[("DPO 1.5B 2x4096", "ours_dpo_precomputed_rows8192")]["ratio_to_peer"] == pytest.approx(3.0)
