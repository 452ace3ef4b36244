"""Command-line flags of the training entry points, spelled like Megatron-LM's (users' scripts carry over).

Only flags this toolkit implements are accepted, plus a few upstream (Pai-Megatron-Patch) flags that are
accepted and ignored because their information comes from the HF config here (listed in IGNORED).
The parsed flags become the frozen, typed run config in ``config.py`` (checks and derived values live there).
"""

from __future__ import annotations

import argparse

# Upstream flags that describe the model/tokenizer: the HF config.json is the source of truth here.
IGNORED_WITH_VALUE = ("--patch-tokenizer-type", "--extra-vocab-size", "--dataloader-type")
IGNORED_FLAGS = ("--no-load-rng-state", "--use-mcore-models", "--swiglu", "--disable-bias-linear")


ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local")  # Megatron-LM's --attention-backend


class ArgumentError(ValueError):
    """A flag combination that cannot work; the message is one line."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An unknown or malformed flag is an ArgumentError (one line, printed once by rank 0, exit code 2) rather
    than argparse's usage message from every rank."""

    def error(self, message):
        raise ArgumentError(f"{message} (all flags: python -m megatron_autoalign.training.train --help)")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every flag's default, unless its help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def build_parser(task_cls=None) -> argparse.ArgumentParser:
    p = OneLineErrorParser(description="megatron_autoalign training (Megatron-LM flag names)", allow_abbrev=False,
                           formatter_class=DefaultsHelpFormatter)
    a = p.add_argument
    # parallelism
    a("--tensor-model-parallel-size", type=int, default=1,
      help="TP: ranks that split each layer's weights (must divide the KV heads)")
    a("--pipeline-model-parallel-size", type=int, default=1, help="PP: pipeline stages the layers are split into")
    a("--sequence-parallel", action="store_true",
      help="with TP > 1: split the activations outside attention/MLP along the sequence across TP ranks")
    a("--context-parallel-size", type=int, default=1, help="CP: ranks that split each sequence (long contexts)")
    a("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
      help="interleaved pipeline schedule: layers per virtual stage (needs PP > 1)")
    a("--use-distributed-optimizer", action="store_true",
      help="shard the optimizer state (and fp32 main weights) across data-parallel ranks")
    a("--overlap-param-gather", action="store_true",
      help="with --use-distributed-optimizer: all-gather the updated parameters bucket by bucket during the "
           "next forward instead of right after the optimizer step (pays off with data parallelism)")
    # batch / schedule
    a("--micro-batch-size", type=int, default=1, help="samples per micro-batch (rows for SFT, pairs for DPO)")
    a("--global-batch-size", type=int, default=None, help="samples per optimizer step (default: micro x DP)")
    a("--train-iters", type=int, default=None, help="default: epochs x train samples / global batch")
    a("--epochs", type=int, default=1, help="passes over the training data when --train-iters is not given")
    a("--seq-length", type=int, default=None, help="default: the manifest's seq_len (must match it)")
    a("--max-padding-length", "--pad-length", dest="max_padding_length", type=int, default=None,
      help="row capacity after padding (>= seq-length; default seq-length)")
    # optimizer / lr
    a("--lr", type=float, default=1e-5, help="peak learning rate (after warm-up)")
    a("--min-lr", type=float, default=0.0, help="learning rate at the end of the decay")
    a("--lr-decay-style", choices=("constant", "linear", "cosine", "inverse-square-root"), default="cosine",
      help="learning-rate decay after the warm-up")
    a("--lr-warmup-iters", type=int, default=0, help="iterations of linear warm-up")
    a("--lr-warmup-fraction", type=float, default=None,
      help="warm-up as a fraction of the decay iterations (instead of --lr-warmup-iters)")
    a("--lr-decay-iters", type=int, default=None, help="default: train-iters")
    a("--weight-decay", type=float, default=0.0, help="decoupled (AdamW) weight decay")
    a("--adam-beta1", type=float, default=0.9, help="Adam beta1")
    a("--adam-beta2", type=float, default=0.999, help="Adam beta2")
    a("--adam-eps", type=float, default=1e-8, help="Adam epsilon")
    a("--clip-grad", type=float, default=1.0, help="clip the global gradient norm to this value")
    a("--optimizer", choices=("adam",), default="adam", help="optimizer (Adam; AdamW through --weight-decay)")
    # precision / memory
    a("--bf16", action="store_true", help="bf16 mixed precision (fp32 main weights and gradient reduction)")
    a("--fp16", action="store_true", help="fp16 mixed precision with loss scaling")
    a("--loss-scale", type=float, default=None, help="fp16 static loss scale (default: dynamic)")
    a("--recompute-granularity", choices=("full", "selective"), default=None,
      help="activation recompute: whole layers (full) or the attention core (selective)")
    a("--recompute-method", choices=("uniform", "block"), default=None,
      help="with full recompute: uniform (groups of N layers) or block (the first N layers per stage)")
    a("--recompute-num-layers", type=int, default=None, help="with full recompute: the N of --recompute-method")
    a("--recompute-activations", action="store_true", help="= --recompute-granularity selective")
    a("--recompute-swiglu", nargs="?", const="all", default=False, type=_recompute_layers, metavar="LAYERS",
      help="local spec: recompute the MLP's SwiGLU output in the backward instead of keeping it, in every "
           "layer or in the model's first LAYERS layers (147 MB per layer at Qwen2.5-1.5B / 8k tokens, "
           "for one elementwise pass per layer)")
    a("--no-gradient-accumulation-fusion", dest="gradient_accumulation_fusion", action="store_false",
      help="GPU: let autograd produce bf16 weight gradients that DDP then adds to the fp32 main grads "
           "(default: linear layers accumulate into the fp32 main grads directly)")
    a("--transformer-impl", choices=("auto", "local", "transformer_engine"), default="auto",
      help="layer implementation: auto = Transformer Engine when it imports, else the local spec")
    a("--attention-backend", choices=ATTENTION_BACKENDS, default="auto",
      help="flash, fused (cuDNN) or unfused: Transformer Engine's attention kernel (needs the TE spec); local: the "
           "local spec (this project's attention: torch SDPA, varlen flash on GPU); auto: TE chooses, or the local spec")
    a("--attention-dropout", type=float, default=0.0, help="dropout probability on attention weights")
    a("--hidden-dropout", type=float, default=0.0, help="dropout probability on the residual branches")
    # data
    a("--data-path", nargs="+", default=None, help="SFT/DPO dataset prefix (one)")
    a("--valid-data-path", nargs="+", default=None, help="separate validation prefix (overrides --split)")
    a("--split", default="100,0,0", help="train,valid,test percentages of --data-path")
    a("--dataset", default="mmap", choices=("mmap", "MMAP", "LLama-Pretrain-Raw", "LLama-SFT-Raw"),
      help="only the mmap idx/bin format is read; the flag is kept for upstream scripts")
    a("--no-shuffle", dest="shuffle", action="store_false", help="keep dataset order (default: per-epoch shuffle)")
    a("--seed", type=int, default=1234, help="random seed (data order, initialisation, dropout)")
    a("--num-workers", type=int, default=0,
      help="only 0: batches are collated in the training process, one step ahead while the GPU computes "
           "(there are no data-loader workers to configure)")
    # model / tokenizer
    a("--model-size", default="auto", help="Qwen2.5 0.5B..72B or Qwen3 qwen3-0.6B..qwen3-32B: checked against the HF config.json (auto: no check)")
    a("--hf-config", default=None, help="HF model dir or config.json (default: --pretrained-checkpoint dir)")
    a("--tokenizer", "--load-tokenizer", dest="tokenizer", default=None,
      help="tokenizer dir (default: --pretrained-checkpoint dir); only checked against the data manifest")
    # checkpoints
    a("--pretrained-checkpoint", default=None, help="converted Megatron checkpoint to start from (weights only)")
    a("--load", default=None, help="resume from our own iter_N checkpoint here (weights only for 'release')")
    a("--save", default=None, help="directory for this run's checkpoints (iter_N/ and the tracker)")
    a("--save-interval", type=int, default=None, help="save every N iterations (and at the end)")
    a("--no-load-optim", action="store_true", help="resume without the optimizer and scheduler state")
    a("--no-load-rng", action="store_true", help="resume without the RNG state")
    a("--finetune", action="store_true", help="load weights from --load but restart iteration, optimizer, data")
    a("--no-save-optim", action="store_true", help="save the model weights only")
    a("--ckpt-step", type=int, default=None, help="resume from --load's iter_N instead of its latest checkpoint")
    a("--keep-last-checkpoints", type=int, default=None, metavar="K",
      help="after each complete save, delete iter_N folders older than the newest K (never the latest)")
    a("--allow-data-change", action="store_true",
      help="resume although the training data differs from the data the checkpoint was trained on")
    a("--ckpt-format", choices=("torch_dist", "torch"), default="torch_dist",
      help="format of the checkpoints this run saves: torch_dist (reshardable) or Megatron-LM's legacy torch "
           "(mp_rank_* files; resumes at the same TP/PP/DP only). Loading detects the format")
    # eval / logging
    a("--eval-interval", type=int, default=None, help="validate every N iterations (and at the end)")
    a("--eval-iters", type=int, default=10, help="batches per validation pass")
    a("--log-interval", type=int, default=1, help="one log line (and tracker record) every N iterations")
    a("--tensorboard-dir", default=None, help="write TensorBoard scalars here (train/ and valid/)")
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
