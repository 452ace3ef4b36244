"""Streaming safetensors reader/writer: round trips, sharding, compatibility, clear errors."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_autoalign.checkpoint.errors import CheckpointError
from megatron_autoalign.checkpoint.safetensors_io import HFReader, SafetensorsFile, ShardedSafetensorsWriter

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 1, "hidden_size": 4,
          "intermediate_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 16}


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {f"t{i}": torch.randn(64, 16, generator=g).to(torch.bfloat16) for i in range(5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sharded_writer_round_trip_and_reference_reader(tmp_path, dtype):
    tensors = _tensors()
    w = ShardedSafetensorsWriter(str(tmp_path), dtype, max_shard_bytes=64 * 16 * dtype.itemsize * 2)
    for k, v in tensors.items():
        w.add(k, v)
    shards = w.close()
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 64 * 16 * dtype.itemsize
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    reader = HFReader(str(tmp_path))
    for k, v in tensors.items():
        assert reader.get(k).dtype == dtype
        assert torch.equal(reader.get(k), v.to(dtype))
        # the reference implementation reads our files bit-exactly
        assert torch.equal(load_file(str(tmp_path / index["weight_map"][k]))[k], v.to(dtype))


def test_reads_reference_written_file(tmp_path):
    tensors = _tensors()
    save_file(tensors, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(f.get(k), v) for k, v in tensors.items())


def _indexed_dir(tmp_path):
    tensors = _tensors()
    w = ShardedSafetensorsWriter(str(tmp_path), torch.bfloat16, max_shard_bytes=64 * 16 * 2 * 2)
    for k, v in tensors.items():
        w.add(k, v)
    w.close()
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def test_missing_shard_is_named(tmp_path):
    d = _indexed_dir(tmp_path)
    os.remove(d / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003.safetensors: shard file is missing"):
        HFReader(str(d))


def test_truncated_shard_is_a_size_mismatch(tmp_path):
    d = _indexed_dir(tmp_path)
    path = d / "model-00003-of-00003.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model-00003-of-00003.safetensors: truncated shard \(size mismatch\)"):
        HFReader(str(d))


def test_corrupt_header(tmp_path):
    d = _indexed_dir(tmp_path)
    path = d / "model-00001-of-00003.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        HFReader(str(d))


def test_missing_tensor(tmp_path):
    d = _indexed_dir(tmp_path)
    with pytest.raises(CheckpointError, match="'nope' is missing"):
        HFReader(str(d)).get("nope")
