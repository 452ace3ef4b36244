"""Command-line flags of the training entry points, spelled like Megatron-LM's (users' scripts carry over).

Only flags this toolkit implements are accepted, plus a few upstream (Pai-Megatron-Patch) flags that are
accepted and ignored because their information comes from the HF config here (listed in IGNORED).
The parsed flags become the frozen, typed run config in ``config.py`` (checks and derived values live there).
"""

from __future__ import annotations

import argparse

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
    a("--model-size", default="auto", help="Qwen2.5 0.5B..72B or Qwen3 qwen3-0.6B..qwen3-32B: checked against the HF config.json (auto: no check)")
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
    a("--ckpt-step", type=int, default=None, help="resume from --load's iter_N instead of its latest checkpoint")
    a("--keep-last-checkpoints", type=int, default=None, metavar="K",
      help="after each complete save, delete iter_N folders older than the newest K (never the latest)")
    a("--allow-data-change", action="store_true",
      help="resume although the training data differs from the data the checkpoint was trained on")
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
