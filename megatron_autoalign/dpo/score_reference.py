"""Reference scoring pass: per-pair reference log-probs written next to the DPO dataset.

    torchrun --nproc_per_node N -m megatron_autoalign.dpo.score_reference \
        --data-path out/dpo --pretrained-checkpoint MG_CKPT [--ref-load OTHER_CKPT] \
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --micro-batch-size 2 [--bf16]

Takes the training flags and starts like training does (``training/startup.py``; use the SAME TP/PP/CP,
precision and micro-batch size as training: the log-probs then come from the same kernels), plus
``--reuse-existing``: do nothing when the manifest already records log-probs of this checkpoint and precision. Writes ``PREFIX_ref_logps.npy`` (float32 [pairs, 2]: chosen,
rejected log-probs summed over trained tokens) then records it in the manifest's ``reference`` entry
(file hash, checkpoint), the manifest last. Training with ``--reference precomputed`` reads it and needs
no reference model.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from ..data.manifest import manifest_path, write_json_atomic
from ..runtime import device, is_last_rank, print_rank_0
from ..training.arguments import ArgumentError, build_parser
from ..training.config import config_from_flags
from ..training.row_data import max_docs_per_row
from ..training.startup import run_entry_point, start
from ..training.task import TaskContext
from .dataset import PreferenceDataset, file_sha256, reference_path
from .task import DPOTask

MICRO_BATCHES_PER_CALL = 16  # bounds the device memory held by batches in flight


def _schedule(num_rows: int, mbs: int, dp_size: int, dp_rank: int) -> list[list[int]]:
    """This DP rank's micro-batches (row indices). Micro-batch j goes to DP rank j % dp; the last one is
    padded with its own first row, because pipeline stages exchange fixed shapes (duplicates rewrite
    the same values)."""
    groups = [list(range(i, min(i + mbs, num_rows))) for i in range(0, num_rows, mbs)]
    groups = [g + [g[0]] * (mbs - len(g)) for g in groups]
    return groups[dp_rank::dp_size]


def score(argv=None) -> str:
    from megatron.core import parallel_state as ps

    from ..checkpoint import load_megatron_checkpoint_weights
    from ..training.loop import Runner, to_device
    from ..training.model_and_optimizer import build_model, build_transformer_config

    parser = build_parser(DPOTask)
    parser.add_argument("--reuse-existing", action="store_true",
                        help="do nothing when the manifest already records log-probs of this checkpoint and precision")
    values = vars(parser.parse_args(argv))
    reuse_existing = values.pop("reuse_existing")
    cfg = config_from_flags(values, int(os.environ.get("WORLD_SIZE", "1")), DPOTask)
    if cfg.task.reference_source == "none":
        raise ArgumentError(f"--loss-type {cfg.task.loss_type} is reference-free: there are no reference log-probs to score")
    # This pass IS the reference model's forward, whatever --reference the training run uses.
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, reference="online"))
    source = DPOTask(cfg).reference_checkpoint()
    if not source:
        raise ArgumentError("the reference scoring pass needs --pretrained-checkpoint (or --ref-load)")
    data_path = cfg.data.data_path
    if reuse_existing and _current(cfg, source):
        print_rank_0(f"{reference_path(data_path)}: reference log-probs of {source} already recorded; reusing them")
        return reference_path(data_path)
    cfg, hf_cfg = start(cfg)
    task = DPOTask(cfg)
    ds = PreferenceDataset(data_path)
    task.setup_layout(max_docs_per_row(data_path), ds.manifest)
    task.check(TaskContext(cfg=cfg, hf_config=hf_cfg))

    chunks = build_model(cfg, hf_cfg, build_transformer_config(cfg, hf_cfg))
    fmt = load_megatron_checkpoint_weights(chunks, source)
    for c in chunks:
        c.eval()
    runner = Runner(task, *task.pipeline_shape())
    ctx = TaskContext(cfg=cfg, hf_config=hf_cfg, forward_only=lambda ch, b, fs=None: runner.run(ch, b, True, fs))

    dev, last_stage = device(), ps.is_pipeline_last_stage(ignore_virtual=True)
    n_pairs = ds.manifest["num_pairs"]
    out = torch.zeros(n_pairs, 2, dtype=torch.float32, device=dev)
    seen = torch.zeros(n_pairs, dtype=torch.float32, device=dev)
    groups = _schedule(len(ds), cfg.training.micro_batch_size, ps.get_data_parallel_world_size(), ps.get_data_parallel_rank())
    t0 = time.time()
    from tqdm import tqdm
    bar = tqdm(total=len(groups), desc="reference micro-batches", disable=not is_last_rank(), mininterval=2.0)
    for lo in range(0, len(groups), MICRO_BATCHES_PER_CALL):
        batches = [to_device(task.collate([ds[i] for i in g]), dev) for g in groups[lo:lo + MICRO_BATCHES_PER_CALL]]
        scores = task.score(chunks, batches, ctx)
        if scores is not None:
            for batch, logps in zip(batches, scores):
                out[batch["pair_index"]] = logps.float()
                seen[batch["pair_index"]] = 1.0
        bar.update(len(batches))
    bar.close()
    path = reference_path(data_path)
    if last_stage:  # each pair was scored on exactly one DP rank: a sum gathers them
        dist.all_reduce(out, group=ps.get_data_parallel_group())
        dist.all_reduce(seen, group=ps.get_data_parallel_group())
        if is_last_rank():
            missing = int((seen == 0).sum())
            if missing:
                raise RuntimeError(f"reference scoring missed {missing} pairs")
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{source}: non-finite reference log-probs; check the checkpoint and precision")
            _write(cfg, path, out.cpu().numpy(), source, fmt, time.time() - t0)
    dist.barrier()
    return path


def _identity(cfg, source: str) -> dict:
    """What makes recorded log-probs reusable: the same checkpoint (path and iteration) and precision."""
    from ..checkpoint import CheckpointError, read_tracker

    try:
        iteration = str(read_tracker(source))
    except CheckpointError:  # an iteration folder was given: its path names the iteration
        iteration = None
    return {"checkpoint": os.path.abspath(source), "checkpoint_iteration": iteration,
            "precision": cfg.model.precision}


def _current(cfg, source: str) -> bool:
    entry = PreferenceDataset(cfg.data.data_path).manifest.get("reference") or {}
    path = reference_path(cfg.data.data_path)
    same = all(entry.get(k) == v for k, v in _identity(cfg, source).items())
    return same and os.path.exists(path) and entry.get("sha256") == file_sha256(path)


def _write(cfg, path: str, logps: np.ndarray, source: str, fmt: str, seconds: float) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, logps.astype(np.float32))
    manifest = PreferenceDataset(cfg.data.data_path).manifest
    mpath = manifest_path(cfg.data.data_path)
    manifest["reference"] = None
    write_json_atomic(mpath, manifest)  # unmark first: a crash below leaves "no reference", never a stale one
    os.replace(tmp, path)
    manifest["reference"] = {
        "file": os.path.basename(path), "sha256": file_sha256(path), "num_pairs": int(logps.shape[0]),
        **_identity(cfg, source), "checkpoint_format": fmt,
        "tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
        "pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size,
        "context_parallel_size": cfg.parallel.context_parallel_size, "micro_batch_size": cfg.training.micro_batch_size,
        "created_by": "megatron_autoalign.dpo.score_reference",
    }
    write_json_atomic(mpath, manifest)
    print(f"wrote {path}: reference log-probs of {logps.shape[0]} pairs in {seconds:.1f}s "
          f"(mean chosen {logps[:, 0].mean():.3f}, rejected {logps[:, 1].mean():.3f})", flush=True)


def main(argv=None) -> int:
    return run_entry_point(lambda: score(argv) and None)


if __name__ == "__main__":  # guard: dist_checkpointing may spawn processes that re-import this module
    sys.exit(main())
