"""Converted checkpoints in a TP2·PP2 trainer (torchrun, 4 gloo processes): the torch_dist checkpoint and
legacy checkpoints written at TP1 and at TP2·PP2 load exactly, and logits match HF within 1e-4 (fp32)."""

import json
import os

import pytest

from megatron_autoalign.checkpoint.convert import main as convert
from tests.distributed.launch import torchrun

WORKER = os.path.join(os.path.dirname(__file__), "..", "workers", "convert_parity_worker.py")


@pytest.mark.timeout(300)
def test_tp2pp2_loads_and_matches_hf(tiny_4layer_dir, tiny_untied_dir, tmp_path):
    def conv(src, name, *flags):
        assert convert(["--load-path", src, "--save-path", str(tmp_path / name), "--precision", "fp32", "--no-progress", *flags]) == 0
        return str(tmp_path / name)

    cases = [
        f"{tiny_4layer_dir}:{conv(tiny_4layer_dir, 'tied_dist')}",
        f"{tiny_4layer_dir}:{conv(tiny_4layer_dir, 'tied_l22', '--ckpt-format', 'torch', '--tp', '2', '--pp', '2', '--use-te', 'false')}:local",
        f"{tiny_4layer_dir}:{conv(tiny_4layer_dir, 'tied_l11', '--ckpt-format', 'torch')}",  # TP1 legacy -> TP2PP2 trainer
        f"{tiny_untied_dir}:{conv(tiny_untied_dir, 'untied_dist')}",
        f"{tiny_untied_dir}:{conv(tiny_untied_dir, 'untied_l22', '--ckpt-format', 'torch', '--tp', '2', '--pp', '2', '--use-te', 'false')}:local",
    ]
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()
    torchrun(WORKER, 4, str(tmp_path / "out.json"), *cases)
    per_rank = [json.loads((tmp_path / f"out.json.{r}").read_text()) for r in range(4)]
    for rank, results in enumerate(per_rank):
        assert len(results) == len(cases)
        for r in results:
            assert r["weights_equal"], (rank, r)
            if r["case"].endswith(":local"):
                assert r["file_matches"], (rank, r)
    # ranks 2, 3 are the last pipeline stage (both TP ranks gather the full vocabulary)
    for rank in (2, 3):
        for r in per_rank[rank]:
            assert r["max_abs"] is not None and r["max_abs"] < 1e-4, r
    assert [r["format"] for r in per_rank[0]] == ["torch_dist", "torch", "torch", "torch_dist", "torch"]
