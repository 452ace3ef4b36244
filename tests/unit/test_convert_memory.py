"""HF -> torch_dist holds a bounded number of layers: peak RSS does not grow with depth.

Tiny-but-wide models (61 MB per fp32 layer, small vocabulary) of 4 and 12 layers, each converted in a fresh
process with parts of one layer. Holding the whole model would add at least the 8 extra layers (490 MB)
to the peak; streaming adds at most a small fraction of it (measured: see bench/bench_convert.py --layers).
The deep model's merged checkpoint covers all 12 layers (test_upstream_interchange loads a multi-part
checkpoint strictly into a stock GPTModel and compares every tensor).
"""

import os

import pytest

from megatron_autoalign.testing.measure import measure_convert
from megatron_autoalign.testing.tiny_models import write_synthetic_qwen2
from tests.conftest import _cached

WIDE = dict(hidden_size=1024, intermediate_size=4096, num_heads=8, num_kv_heads=2, vocab_size=1024, tied=False)
LAYER_BYTES = 4 * (1024 * (1024 + 2 * 256) + (1024 + 2 * 256) + 1024 * 1024 + 3 * 4096 * 1024 + 2 * 1024)
DEPTHS = (4, 12)  # 4: past the first parts, where the allocator settles


def _hf(layers: int) -> str:
    import torch

    return write_synthetic_qwen2(_cached(f"wide_{layers}l"), layers, dtype=torch.float32, **WIDE)


@pytest.mark.timeout(600)
def test_peak_rss_is_flat_in_depth(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = {}
    for layers in DEPTHS:
        out = tmp_path / f"mg{layers}"
        r = measure_convert(["--load-path", _hf(layers), "--save-path", str(out), "--precision", "fp32",
                             "--part-size", "64MB"], env=env)
        peaks[layers] = r["peak_rss_gb"] * 2**30
    shallow, deep = DEPTHS
    growth = peaks[deep] - peaks[shallow]
    whole_model_growth = (deep - shallow) * LAYER_BYTES
    print(f"peak RSS {shallow} layers {peaks[shallow] / 2**20:.0f} MiB, {deep} layers {peaks[deep] / 2**20:.0f} MiB, "
          f"growth {growth / 2**20:.1f} MiB vs {whole_model_growth / 2**20:.0f} MiB of extra weights")
    assert growth < 0.25 * whole_model_growth

    from megatron.core import dist_checkpointing

    meta = dist_checkpointing.load_tensors_metadata(str(tmp_path / f"mg{deep}" / "release"))
    assert tuple(meta["decoder.layers.mlp.linear_fc1.weight"].global_shape) == (deep, 8192, 1024)
