"""HF <-> Megatron conversion for every registered family: Qwen2.5, Qwen3 (single process, CPU is enough).

    python -m megatron_autoalign.checkpoint.convert --load-path HF_DIR --save-path MG_DIR \\
        --model-size 1.5B --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --precision bf16
    python -m megatron_autoalign.checkpoint.convert --mg2hf --load-path MG_DIR --save-path HF_OUT \\
        --hf-ckpt-path ORIGINAL_HF_DIR --precision bf16

Bad input ends with one line ``error: <file>: <reason>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..host import unwritable_reason
from ..models.family import ConfigError
from ..models.hf_config import (
    check_model_size, check_tensor_parallel, dims_of, family_of, load_hf_config, pipeline_split,
)
from ..models.tensor_map import HFSource
from .errors import CheckpointError, run_command
from .layout import DTYPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megatron_autoalign.checkpoint.convert",
        description="Convert Qwen2.5 / Qwen3 checkpoints between HF safetensors and Megatron (torch_dist or legacy torch).",
    )
    p.add_argument("--load-path", required=True, help="source: an HF model dir (HF->MG) or a Megatron checkpoint dir (MG->HF; root with tracker, or release/ / iter_N/)")
    p.add_argument("--save-path", required=True, help="destination directory; must not exist or be empty")
    p.add_argument("--model-size", default="auto", help="a named size, checked against config.json (whose model_type picks the family): Qwen2.5 "
                        "0.5B 1.5B 3B 7B 14B 32B 72B, Qwen3 qwen3-0.6B qwen3-1.7B qwen3-4B qwen3-8B qwen3-14B "
                        "qwen3-32B (a size without prefix is looked up in the config's family); or auto")
    p.add_argument("--tensor-model-parallel-size", "--tp", dest="tp", type=int, default=1,
                   help="TP: the layout of a legacy checkpoint; for torch_dist only validated and recorded (it loads at any TP)")
    p.add_argument("--pipeline-model-parallel-size", "--pp", dest="pp", type=int, default=1,
                   help="PP: as for TP; uneven splits put the extra layers on the first and last stages")
    p.add_argument("--precision", choices=sorted(DTYPES), default="bf16", help="dtype of the written weights")
    p.add_argument("--use-te", type=_bool, default=True, metavar="{true,false}",
                   help="legacy layout naming: Transformer Engine spec (norms inside linear_qkv/linear_fc1) or local "
                        "spec (input_layernorm/pre_mlp_layernorm); must match the training run's --transformer-impl")
    p.add_argument("--no-position-embedding", dest="add_position_embedding", action="store_false",
                   help="record add_position_embedding=False in the checkpoint args, for Megatron-LM scripts that "
                        "pass --no-position-embedding (default: True, upstream's default)")
    p.add_argument("--mg2hf", action="store_true", help="Megatron -> HF (default: HF -> Megatron)")
    p.add_argument("--hf-ckpt-path", default=None,
                   help="MG->HF: the original HF model dir supplying config.json and tokenizer files "
                        "(default: the copies written next to the Megatron checkpoint)")
    p.add_argument("--ckpt-format", choices=("torch_dist", "torch"), default="torch_dist",
                   help="HF->MG output layout: torch_dist (default, reshardable) or legacy torch mp_rank_TT_PPP")
    p.add_argument("--max-shard-size", default="1GB", help="MG->HF: largest safetensors shard (e.g. 2GB, 500MB)")
    p.add_argument("--verify", action="store_true",
                   help="after converting, run HF and Megatron models on the same tokens, print logits max-abs diff "
                        "and cosine, and exit with 1 when they differ beyond the tolerance (fp32: max-abs 1e-4)")
    p.add_argument("--verify-tolerance", type=float, default=1e-3,
                   help="largest accepted logits max-abs difference for --verify (fp32 on CPU: about 1e-6 on the "
                        "test models)")
    p.add_argument("--part-size", default="1GB",
                   help="HF->torch_dist: write the checkpoint in parts of about this size (whole layers), so that "
                        "memory stays bounded whatever the depth")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _check_destination(path: str) -> None:
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise CheckpointError(f"{path}: destination exists and is not empty; choose a new directory")
    reason = unwritable_reason(path, create=False)  # a failed conversion leaves no folder behind
    if reason:
        raise CheckpointError(f"{path}: cannot write the converted checkpoint here ({reason}); choose another directory")


def _remove_partial_output(path: str, created: bool) -> None:
    """Undo a failed conversion: the destination goes back to absent (or empty, if it existed empty)."""
    import shutil

    if created:
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.isdir(path):
        for name in os.listdir(path):
            full = os.path.join(path, name)
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)


def _check_model(hf_config: dict, args, where: str) -> None:
    if args.tp < 1 or args.pp < 1:
        raise CheckpointError(f"{where}: TP and PP must be at least 1 (got TP={args.tp}, PP={args.pp})")
    try:
        check_model_size(args.model_size, hf_config)
        if not args.mg2hf:  # MG -> HF reads the layout from the checkpoint files
            check_tensor_parallel(hf_config, args.tp)
            pipeline_split(hf_config["num_hidden_layers"], args.pp)
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None


def hf_to_megatron(args, progress) -> None:
    from .layout import CHECKPOINT_VERSION, copy_hf_side_files, iteration_dir, write_tracker
    from .megatron_args import megatron_lm_args
    from .safetensors_io import HFReader, parse_size

    reader = HFReader(args.load_path)
    config_file = os.path.join(args.load_path, "config.json")
    _check_model(reader.config, args, config_file)
    dtype = DTYPES[args.precision]
    source = HFSource(reader, family_of(reader.config), dims_of(reader.config))
    iter_dir = iteration_dir(args.save_path, "release")
    os.makedirs(iter_dir, exist_ok=True)
    impl = "transformer_engine" if args.use_te else "local"
    common = {
        "args": megatron_lm_args(reader.config, args.tp, args.pp, dtype, impl, args.ckpt_format,
                                 add_position_embedding=args.add_position_embedding),
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": 0,
    }
    try:
        if args.ckpt_format == "torch_dist":
            from .torch_dist import save_torch_dist

            save_torch_dist(source, reader.config, iter_dir, dtype, common, progress=progress("HF -> torch_dist parts"),
                            part_bytes=parse_size(args.part_size))
        else:
            from .legacy import save_legacy

            save_legacy(source, reader.config, iter_dir, dtype, args.tp, args.pp, args.use_te, common,
                        progress=progress("HF -> legacy stages"))
            # Upstream retries a mismatching legacy load non-strictly and silently leaves the norms unset.
            print(f"legacy checkpoint written with {'Transformer Engine' if args.use_te else 'local'}-spec names: "
                  f"load it with --transformer-impl {impl}", flush=True)
    except ValueError as e:  # a shape that disagrees with config.json
        raise CheckpointError(f"{args.load_path}: {e}") from None
    copy_hf_side_files(args.load_path, args.save_path)
    write_tracker(args.save_path, "release")  # last: the checkpoint is complete now


def open_megatron_source(path: str, hf_config: dict):
    from .layout import resolve_checkpoint

    iter_dir, fmt = resolve_checkpoint(path)
    family, dims = family_of(hf_config), dims_of(hf_config)
    if fmt == "torch_dist":
        from .torch_dist import TorchDistSource

        return TorchDistSource(iter_dir, family, dims)
    from .legacy import LegacySource

    return LegacySource(iter_dir, family, dims)


def megatron_to_hf(args, progress) -> None:
    from .hf_export import write_hf_checkpoint
    from .layout import hf_side_dir, resolve_checkpoint
    from .recorded_config import check_hf_config_matches
    from .safetensors_io import parse_size

    side = args.hf_ckpt_path or hf_side_dir(args.load_path)
    if side is None:
        raise CheckpointError(f"{args.load_path}: no config.json next to the checkpoint; pass --hf-ckpt-path ORIGINAL_HF_PATH")
    try:
        hf_config = load_hf_config(side)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    config_file = os.path.join(side, "config.json")
    _check_model(hf_config, args, config_file)
    iter_dir, fmt = resolve_checkpoint(args.load_path)
    check_hf_config_matches(hf_config, config_file, iter_dir, fmt)
    source = open_megatron_source(args.load_path, hf_config)
    try:
        write_hf_checkpoint(source, hf_config, side, args.save_path, DTYPES[args.precision],
                            parse_size(args.max_shard_size), progress=progress("Megatron -> HF"))
    except ValueError as e:
        raise CheckpointError(f"{args.load_path}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def progress(desc):
        if args.no_progress:
            return None
        from tqdm import tqdm

        return lambda it, total=None: tqdm(it, desc=desc, total=total, file=sys.stderr)

    def convert():
        start = time.time()
        created = not os.path.exists(args.save_path)  # before the check, which creates it to probe writability
        _check_destination(args.save_path)
        try:
            if args.mg2hf:
                megatron_to_hf(args, progress)
            else:
                hf_to_megatron(args, progress)
        except BaseException:
            _remove_partial_output(args.save_path, created)  # a retry must not find "destination not empty"
            raise
        print(f"converted {args.load_path} -> {args.save_path} in {time.time() - start:.1f}s", flush=True)
        if args.verify:
            from .verify import check_within_tolerance, verify

            hf_dir, mg_dir = (args.save_path, args.load_path) if args.mg2hf else (args.load_path, args.save_path)
            check_within_tolerance(*verify(hf_dir, mg_dir), args.verify_tolerance, where=args.save_path)

    return run_command(convert)


if __name__ == "__main__":
    sys.exit(main())
