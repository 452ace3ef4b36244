"""Command-line flags of the training entry points, spelled like Megatron-LM's (users' scripts carry over).

Only flags this toolkit implements are accepted, plus a few upstream (Pai-Megatron-Patch) flags that are
accepted and ignored because their information comes from the HF config here (listed in IGNORED).
"""

from __future__ import annotations

import argparse
import os

# Upstream flags that describe the model/tokenizer: the HF config.json is the source of truth here.
IGNORED_WITH_VALUE = (
    "--patch-tokenizer-type", "--extra-vocab-size", "--num-workers",
    "--ckpt-format", "--dataloader-type", "--attention-backend",
)
IGNORED_FLAGS = ("--no-load-rng-state", "--use-mcore-models", "--swiglu", "--disable-bias-linear")


class ArgumentError(ValueError):
    """A flag combination that cannot work; the message is one line."""


def build_parser(task_cls=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="megatron_autoalign training (Megatron-LM flag names)", allow_abbrev=False)
    a = p.add_argument
    # parallelism
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--sequence-parallel", action="store_true")
    a("--context-parallel-size", type=int, default=1)
    a("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    a("--use-distributed-optimizer", action="store_true")
    a("--overlap-param-gather", action="store_true",
      help="with --use-distributed-optimizer: all-gather the updated parameters bucket by bucket during the "
           "next forward instead of right after the optimizer step (pays off with data parallelism)")
    # batch / schedule
    a("--micro-batch-size", type=int, default=1, help="samples per micro-batch (rows for SFT, pairs for DPO)")
    a("--global-batch-size", type=int, default=None, help="samples per optimizer step (default: micro x DP)")
    a("--train-iters", type=int, default=None, help="default: epochs x train samples / global batch")
    a("--epochs", type=int, default=1)
    a("--seq-length", type=int, default=None, help="default: the manifest's seq_len (must match it)")
    a("--max-padding-length", "--pad-length", dest="max_padding_length", type=int, default=None,
      help="row capacity after padding (>= seq-length; default seq-length)")
    # optimizer / lr
    a("--lr", type=float, default=1e-5)
    a("--min-lr", type=float, default=0.0)
    a("--lr-decay-style", choices=("constant", "linear", "cosine", "inverse-square-root"), default="cosine")
    a("--lr-warmup-iters", type=int, default=0)
    a("--lr-warmup-fraction", type=float, default=None)
    a("--lr-decay-iters", type=int, default=None, help="default: train-iters")
    a("--weight-decay", type=float, default=0.0)
    a("--adam-beta1", type=float, default=0.9)
    a("--adam-beta2", type=float, default=0.999)
    a("--adam-eps", type=float, default=1e-8)
    a("--clip-grad", type=float, default=1.0)
    a("--optimizer", choices=("adam",), default="adam")
    # precision / memory
    a("--bf16", action="store_true")
    a("--fp16", action="store_true")
    a("--loss-scale", type=float, default=None, help="fp16 static loss scale (default: dynamic)")
    a("--recompute-granularity", choices=("full", "selective"), default=None)
    a("--recompute-method", choices=("uniform", "block"), default=None)
    a("--recompute-num-layers", type=int, default=None)
    a("--recompute-activations", action="store_true", help="= --recompute-granularity selective")
    a("--recompute-swiglu", nargs="?", const="all", default=False, type=_recompute_layers, metavar="LAYERS",
      help="local spec: recompute the MLP's SwiGLU output in the backward instead of keeping it, in every "
           "layer or in the model's first LAYERS layers (147 MB per layer at Qwen2.5-1.5B / 8k tokens, "
           "for one elementwise pass per layer)")
    a("--no-gradient-accumulation-fusion", dest="gradient_accumulation_fusion", action="store_false",
      help="GPU: let autograd produce bf16 weight gradients that DDP then adds to the fp32 main grads "
           "(default: linear layers accumulate into the fp32 main grads directly)")
    a("--transformer-impl", choices=("auto", "local", "transformer_engine"), default="auto")
    a("--attention-dropout", type=float, default=0.0)
    a("--hidden-dropout", type=float, default=0.0)
    # data
    a("--data-path", nargs="+", default=None, help="SFT/DPO dataset prefix (one)")
    a("--valid-data-path", nargs="+", default=None, help="separate validation prefix (overrides --split)")
    a("--split", default="100,0,0", help="train,valid,test percentages of --data-path")
    a("--dataset", default="mmap", choices=("mmap", "MMAP", "LLama-Pretrain-Raw", "LLama-SFT-Raw"),
      help="only the mmap idx/bin format is read; the flag is kept for upstream scripts")
    a("--no-shuffle", dest="shuffle", action="store_false", help="keep dataset order (default: per-epoch shuffle)")
    a("--seed", type=int, default=1234)
    # model / tokenizer
    a("--model-size", default="auto", help="0.5B..72B: checked against the HF config.json (auto: no check)")
    a("--hf-config", default=None, help="HF model dir or config.json (default: --pretrained-checkpoint dir)")
    a("--tokenizer", "--load-tokenizer", dest="tokenizer", default=None,
      help="tokenizer dir (default: --pretrained-checkpoint dir); only checked against the data manifest")
    # checkpoints
    a("--pretrained-checkpoint", default=None, help="converted Megatron checkpoint to start from (weights only)")
    a("--load", default=None, help="resume from our own iter_N checkpoint here (weights only for 'release')")
    a("--save", default=None)
    a("--save-interval", type=int, default=None)
    a("--no-load-optim", action="store_true")
    a("--no-load-rng", action="store_true")
    a("--finetune", action="store_true", help="load weights from --load but restart iteration, optimizer, data")
    a("--no-save-optim", action="store_true")
    # eval / logging
    a("--eval-interval", type=int, default=None)
    a("--eval-iters", type=int, default=10)
    a("--log-interval", type=int, default=1)
    a("--tensorboard-dir", default=None)
    a("--wandb-project", default=None, help="log the same scalars as TensorBoard to this Weights & Biases project "
      "(pip install -e '.[wandb]'; WANDB_MODE=offline writes the run locally)")
    a("--wandb-exp-name", default=None, help="W&B run name (default: W&B's generated name)")
    a("--wandb-save-dir", default=None, help="local W&B directory (default: SAVE/wandb)")
    a("--log-json", default=None, help="append one JSON line per step (tests, tooling)")
    a("--max-skipped-steps", type=int, default=10, help="stop with an error after this many NaN/inf steps")
    a("--exit-interval", type=int, default=None, help="stop (and save) after this many iterations in this run")
    a("--peak-tflops", type=float, default=None, help="per-GPU peak for MFU (default by GPU name)")
    for flag in IGNORED_WITH_VALUE:
        a(flag, default=None, help=argparse.SUPPRESS)
    for flag in IGNORED_FLAGS:
        a(flag, action="store_true", help=argparse.SUPPRESS)
    if task_cls is not None:
        task_cls.add_arguments(p)
    return p


def _recompute_layers(value: str):
    """``all`` -> True (every layer); a positive integer N -> N (the model's first N layers)."""
    if value == "all":
        return True
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive number of layers, got {value!r}")
    return int(value)


def _single(paths, flag):
    if not paths:
        return None
    if len(paths) != 1:
        raise ArgumentError(f"{flag}: exactly one dataset prefix is supported (blending weights are not), got {paths}")
    return paths[0]


def finalize(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Derived values and cross-flag checks that need only the world size (one-line ArgumentError)."""
    args.data_path = _single(args.data_path, "--data-path")
    args.valid_data_path = _single(args.valid_data_path, "--valid-data-path")
    if args.bf16 and args.fp16:
        raise ArgumentError("--bf16 and --fp16 are mutually exclusive")
    if args.recompute_activations:
        args.recompute_granularity = "selective"
    if args.recompute_granularity == "full" and args.recompute_method is None:
        args.recompute_method = "uniform"
    if args.recompute_granularity == "full" and args.recompute_num_layers is None:
        args.recompute_num_layers = 1
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    mp = tp * pp * cp
    if min(tp, pp, cp) < 1 or world_size % mp:
        raise ArgumentError(f"world size {world_size} is not divisible by TP({tp}) x PP({pp}) x CP({cp}) = {mp}")
    args.data_parallel_size = world_size // mp
    if args.overlap_param_gather and not args.use_distributed_optimizer:
        raise ArgumentError("--overlap-param-gather needs --use-distributed-optimizer (it overlaps that optimizer's parameter all-gather)")
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # megatron would refuse; SP is meaningless without TP
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * args.data_parallel_size
    per_step = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size % per_step:
        raise ArgumentError(
            f"--global-batch-size {args.global_batch_size} is not divisible by micro-batch-size "
            f"{args.micro_batch_size} x DP {args.data_parallel_size} = {per_step}"
        )
    args.num_microbatches = args.global_batch_size // per_step
    if args.num_layers_per_virtual_pipeline_stage is not None and pp == 1:
        raise ArgumentError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
    if args.save_interval is not None and args.save_interval <= 0:
        raise ArgumentError("--save-interval must be positive")
    if args.dataset not in ("mmap", "MMAP"):
        raise ArgumentError(f"--dataset {args.dataset}: only 'mmap' (idx/bin from the preprocessing step) is supported")
    if args.data_path is None:
        raise ArgumentError("--data-path is required")
    try:
        split = [float(x) for x in str(args.split).replace("/", ",").split(",") if x.strip()]
    except ValueError:
        split = []
    if not split or any(x < 0 for x in split) or sum(split) <= 0:
        raise ArgumentError(f"--split {args.split!r}: expected non-negative weights like 98,2,0")
    split = (split + [0.0, 0.0])[:3]
    args.split_fractions = [x / sum(split) for x in split]
    ckpt_dir = args.pretrained_checkpoint
    if args.hf_config is None:
        args.hf_config = ckpt_dir
        if args.hf_config is None or not os.path.exists(os.path.join(args.hf_config, "config.json")):
            raise ArgumentError("--hf-config is required (no config.json next to --pretrained-checkpoint)")
    if args.tokenizer is None and ckpt_dir and os.path.exists(os.path.join(ckpt_dir, "tokenizer_config.json")):
        args.tokenizer = ckpt_dir
    return args
