"""The run configuration: the Megatron-LM flags (``arguments.py``) parsed ONCE into frozen, typed groups,
validated and derived here and nowhere else. Nothing assigns to a config after this module built it.

Three stages, each returning a NEW frozen ``RunConfig`` (``dataclasses.replace``):

- ``parse_run_config(argv, world_size, task_cls)``: the flags and the world size (batch sizes, DP size,
  split fractions, default paths, cross-flag errors);
- ``for_model(cfg, hf_config)``: what needs the model's HF config (virtual pipeline size, size/TP checks);
- ``for_data(cfg, manifest, num_train_samples, has_validation)``: what needs the data (sequence length,
  iterations, LR decay).

A flag that cannot take effect is an error (``ArgumentError``, one line), or a warning where upstream
Megatron-LM only warns (``cfg.warnings``, printed once by the start-up in ``startup.py``), never silent.

Adding a flag: one ``add_argument`` in ``arguments.build_parser`` (Megatron-LM's name and default) and a
field of the same name (the flag's ``dest``) in ONE group below; its checks go into ``_derive``. Every
parsed flag must land in exactly one group (checked at every parse), except the upstream flags that
``arguments.IGNORED_*`` accepts without effect. A task's own flags go into its ``Task.config_class``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .arguments import IGNORED_FLAGS, IGNORED_WITH_VALUE, ArgumentError, build_parser


def derived(default=None):
    """A field computed from other flags (not a flag itself)."""
    return field(default=default, metadata={"derived": True})


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    context_parallel_size: int
    sequence_parallel: bool
    num_layers_per_virtual_pipeline_stage: Optional[int]
    use_distributed_optimizer: bool
    overlap_param_gather: bool
    data_parallel_size: int = derived(1)  # world / (TP x PP x CP)
    virtual_pipeline_model_parallel_size: Optional[int] = derived()  # for_model: chunks per pipeline rank


@dataclass(frozen=True)
class TrainingConfig:
    """Batch sizes (in samples: packed rows for SFT, pairs for DPO), length of the run, validation, stops."""

    micro_batch_size: int
    global_batch_size: int
    train_iters: Optional[int]  # for_data: default epochs x train samples / global batch
    epochs: int
    seed: int
    eval_interval: Optional[int]
    eval_iters: int
    max_skipped_steps: int
    exit_interval: Optional[int]
    num_microbatches: int = derived(1)  # per DP rank and step


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str
    lr: float
    min_lr: float
    lr_decay_style: str
    lr_warmup_iters: int
    lr_warmup_fraction: Optional[float]
    lr_decay_iters: Optional[int]  # for_data: default train_iters
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    clip_grad: float

    @property
    def warmup_iters(self) -> int:
        if self.lr_warmup_fraction is not None:
            return int(self.lr_warmup_fraction * self.lr_decay_iters)
        return self.lr_warmup_iters


@dataclass(frozen=True)
class ModelConfig:
    """The model comes from the HF config.json; these flags choose its numerics and implementation."""

    model_size: str
    hf_config: str
    tokenizer: Optional[str]
    bf16: bool
    fp16: bool
    loss_scale: Optional[float]
    recompute_activations: bool
    recompute_granularity: Optional[str]
    recompute_method: Optional[str]
    recompute_num_layers: Optional[int]
    recompute_swiglu: Union[bool, int]
    gradient_accumulation_fusion: bool
    transformer_impl: str  # --attention-backend local turns auto into local
    attention_backend: str
    attention_dropout: float
    hidden_dropout: float

    @property
    def params_dtype(self):
        import torch  # here, not at the top: checking the flags (check_args, --help) must not wait for torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass(frozen=True)
class DataConfig:
    data_path: str
    valid_data_path: Optional[str]
    split: str
    dataset: str
    shuffle: bool
    seq_length: Optional[int]  # for_data: default the manifest's seq_len
    max_padding_length: Optional[int]
    num_workers: int  # only 0 (refused otherwise)
    split_fractions: tuple = derived((1.0, 0.0, 0.0))  # train, valid, test


@dataclass(frozen=True)
class CheckpointConfig:
    pretrained_checkpoint: Optional[str]
    load: Optional[str]
    save: Optional[str]
    save_interval: Optional[int]
    no_load_optim: bool
    no_load_rng: bool
    finetune: bool
    no_save_optim: bool
    ckpt_step: Optional[int]  # resume from this iter_N of --load instead of the latest
    keep_last_checkpoints: Optional[int]
    allow_data_change: bool  # resume although the data's manifest differs from the checkpoint's
    ckpt_format: str  # what this run saves: torch_dist or Megatron-LM's legacy torch


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int
    tensorboard_dir: Optional[str]
    log_json: Optional[str]
    peak_tflops: Optional[float]
    wandb_project: Optional[str]
    wandb_exp_name: Optional[str]
    wandb_save_dir: Optional[str]


GROUPS = {
    "parallel": ParallelConfig, "training": TrainingConfig, "optimizer": OptimizerConfig, "model": ModelConfig,
    "data": DataConfig, "checkpoint": CheckpointConfig, "logging": LoggingConfig,
}


@dataclass(frozen=True)
class RunConfig:
    parallel: ParallelConfig
    training: TrainingConfig
    optimizer: OptimizerConfig
    model: ModelConfig
    data: DataConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    task: Any = None  # the task's own frozen dataclass (Task.config_class), None when it has no flags
    warnings: tuple = ()  # flags that cannot take effect where upstream only warns; printed at start-up

    def flat(self) -> dict:
        """Every field by its flag name (Megatron-LM's flat ``args`` view): saved with checkpoints."""
        out = {}
        for name in (*GROUPS, "task"):
            group = getattr(self, name)
            if group is not None:
                out.update({f.name: getattr(group, f.name) for f in dataclasses.fields(group)})
        return out

    def replace(self, **groups) -> "RunConfig":
        """A new config with some groups' fields replaced: ``cfg.replace(data={"seq_length": 4096})``."""
        changes = {g: dataclasses.replace(getattr(self, g), **fields) for g, fields in groups.items()}
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- stage 1: the flags


def parse_run_config(argv=None, world_size: int | None = None, task_cls=None) -> RunConfig:
    """Parse the command line (Megatron-LM flag names) into a validated, frozen config."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    values = dict(vars(build_parser(task_cls).parse_args(argv)))
    return config_from_flags(values, world_size, task_cls)


def config_from_flags(values: dict, world_size: int, task_cls=None) -> RunConfig:
    """``values``: the parsed flags by dest (a plain dict, consumed here)."""
    values, warnings = _derive(dict(values), world_size)
    task_class = getattr(task_cls, "config_class", None)
    groups = {name: _build(cls, values) for name, cls in GROUPS.items()}
    task_cfg = _build(task_class, values) if task_class else None
    warnings += list(getattr(task_cfg, "warnings", ()))  # a task config may name its own flags without effect
    ignored = {_dest(f): f for f in IGNORED_WITH_VALUE + IGNORED_FLAGS}
    left = set(values) - set(ignored)
    if left:  # a flag was added to the parser without a field: it would be parsed and never used
        raise AssertionError(f"flags without a config field (add them to a group in training/config.py): {sorted(left)}")
    given = [ignored[d] for d in ignored if values.get(d) not in (None, False)]
    if given:  # accepted so that upstream scripts run; said, not silent
        warnings.append(f"{', '.join(given)}: accepted for upstream Megatron-LM scripts, no effect here")
    return RunConfig(**groups, task=task_cfg, warnings=tuple(warnings))


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _build(cls, values: dict):
    """An instance of ``cls`` from (and removing) the values named like its fields."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = values.pop(f.name)
        elif not f.metadata.get("derived"):
            raise AssertionError(f"{cls.__name__}.{f.name} has no flag (a field of a config group must be one)")
    return cls(**kwargs)


def _single(paths, flag):
    if not paths:
        return None
    if len(paths) != 1:
        raise ArgumentError(f"{flag}: exactly one dataset prefix is supported (blending weights are not), got {paths}")
    return paths[0]


def _check_attention_backend(v: dict) -> None:
    """Megatron-LM's kernels (flash, fused, unfused) exist in Transformer Engine's attention only; ``local``
    means the local spec, as in Megatron-LM."""
    backend = v["attention_backend"]
    if backend == "auto":
        return
    if backend == "local":
        if v["transformer_impl"] == "transformer_engine":
            raise ArgumentError("--attention-backend local uses the local spec: drop --transformer-impl transformer_engine")
        v["transformer_impl"] = "local"
        return
    from megatron_autoalign.models import resolve_transformer_impl  # imports torch: only for a non-default flag

    if resolve_transformer_impl(v["transformer_impl"]) != "transformer_engine":
        why = "--transformer-impl local" if v["transformer_impl"] == "local" else "Transformer Engine is not installed"
        raise ArgumentError(f"--attention-backend {backend} picks a Transformer Engine attention kernel, but this run "
                            f"uses the local spec ({why}); drop the flag (the local spec runs torch SDPA, and flash "
                            "attention for packed rows on GPU)")


def _derive(v: dict, world_size: int) -> tuple[dict, list[str]]:
    """Cross-flag checks and derived values on the parsed flags (one-line ArgumentError)."""
    warnings = []
    v["data_path"] = _single(v["data_path"], "--data-path")
    v["valid_data_path"] = _single(v["valid_data_path"], "--valid-data-path")
    if v["bf16"] and v["fp16"]:
        raise ArgumentError("--bf16 and --fp16 are mutually exclusive")
    if v["loss_scale"] is not None and not (v["bf16"] or v["fp16"]):
        raise ArgumentError("--loss-scale needs --fp16 or --bf16 (fp32 training does not scale the loss)")

    # recompute: --recompute-activations is Megatron-LM's spelling of selective recompute
    if v["recompute_activations"]:
        if v["recompute_granularity"] not in (None, "selective"):
            raise ArgumentError(f"--recompute-activations (selective) contradicts --recompute-granularity {v['recompute_granularity']}")
        v["recompute_granularity"] = "selective"
    if v["recompute_granularity"] == "full":
        v["recompute_method"] = v["recompute_method"] or "uniform"
        v["recompute_num_layers"] = v["recompute_num_layers"] or 1
    elif v["recompute_method"] is not None or v["recompute_num_layers"] is not None:
        raise ArgumentError("--recompute-method and --recompute-num-layers need --recompute-granularity full")

    # parallel layout
    tp, pp, cp = v["tensor_model_parallel_size"], v["pipeline_model_parallel_size"], v["context_parallel_size"]
    mp = tp * pp * cp
    if min(tp, pp, cp) < 1 or world_size % mp:
        raise ArgumentError(f"world size {world_size} is not divisible by TP({tp}) x PP({pp}) x CP({cp}) = {mp}")
    v["data_parallel_size"] = dp = world_size // mp
    if v["overlap_param_gather"] and not v["use_distributed_optimizer"]:
        raise ArgumentError("--overlap-param-gather needs --use-distributed-optimizer (it overlaps that optimizer's parameter all-gather)")
    if v["sequence_parallel"] and tp == 1:
        # Megatron-LM's own words and behaviour: a warning, and SP off.
        warnings.append("disabling sequence parallelism because tensor model parallelism is disabled (--sequence-parallel at TP=1)")
        v["sequence_parallel"] = False
    if v["num_layers_per_virtual_pipeline_stage"] is not None and pp == 1:
        raise ArgumentError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")

    # batch sizes
    mbs = v["micro_batch_size"]
    if v["global_batch_size"] is None:
        v["global_batch_size"] = mbs * dp
    per_step = mbs * dp
    if v["global_batch_size"] % per_step:
        raise ArgumentError(
            f"--global-batch-size {v['global_batch_size']} is not divisible by micro-batch-size "
            f"{mbs} x DP {dp} = {per_step}"
        )
    v["num_microbatches"] = v["global_batch_size"] // per_step
    if v["lr_warmup_fraction"] is not None and v["lr_warmup_iters"]:
        raise ArgumentError("--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive")

    # checkpoints
    if v["save_interval"] is not None and v["save_interval"] <= 0:
        raise ArgumentError("--save-interval must be positive")
    if v["keep_last_checkpoints"] is not None and v["keep_last_checkpoints"] < 1:
        raise ArgumentError("--keep-last-checkpoints must be at least 1")
    for flag in ("save_interval", "no_save_optim", "keep_last_checkpoints"):
        if v[flag] and not v["save"]:
            raise ArgumentError(f"--{flag.replace('_', '-')} needs --save (no checkpoints are written without it)")
    for flag in ("no_load_optim", "no_load_rng", "finetune", "ckpt_step", "allow_data_change"):
        if v[flag] and not v["load"]:
            warnings.append(f"--{flag.replace('_', '-')} has no effect without --load "
                            "(--pretrained-checkpoint always loads weights only)")
    if v["exit_interval"] and not v["save"]:
        warnings.append("--exit-interval without --save: the run stops without writing a checkpoint")

    # logging
    from .trackers import wandb_missing

    if wandb_missing(v["wandb_project"]):
        raise ArgumentError(wandb_missing(v["wandb_project"]))
    for flag in ("wandb_exp_name", "wandb_save_dir"):
        if v[flag] and not v["wandb_project"]:
            raise ArgumentError(f"--{flag.replace('_', '-')} needs --wandb-project (W&B is off without it)")

    # Megatron-LM flags with no counterpart here: refused, not ignored
    if v["num_workers"]:
        raise ArgumentError(f"--num-workers {v['num_workers']}: batches are collated in the training process one "
                            "step ahead while the GPU computes; there are no data-loader workers (drop the flag)")
    _check_attention_backend(v)

    # data
    if v["dataset"] not in ("mmap", "MMAP"):
        raise ArgumentError(f"--dataset {v['dataset']}: only 'mmap' (idx/bin from the preprocessing step) is supported")
    if v["data_path"] is None:
        raise ArgumentError("--data-path is required")
    try:
        split = [float(x) for x in str(v["split"]).replace("/", ",").split(",") if x.strip()]
    except ValueError:
        split = []
    if not split or any(x < 0 for x in split) or sum(split) <= 0:
        raise ArgumentError(f"--split {v['split']!r}: expected non-negative weights like 98,2,0")
    split = (split + [0.0, 0.0])[:3]
    v["split_fractions"] = fractions = tuple(x / sum(split) for x in split)
    if fractions[2] > 0:
        warnings.append(f"--split {v['split']}: the test part ({100 * fractions[2]:.3g}% of the rows) is neither "
                        "trained on nor evaluated (there is no test pass)")
    if v["valid_data_path"] and fractions[1] > 0:
        warnings.append(f"--split {v['split']}: --valid-data-path replaces the validation part, so its "
                        f"{100 * fractions[1]:.3g}% of the rows are neither trained on nor evaluated")

    # model files: the HF config (and tokenizer) default to the converted checkpoint's directory
    ckpt_dir = v["pretrained_checkpoint"]
    if ckpt_dir and not os.path.exists(ckpt_dir):
        raise ArgumentError(f"--pretrained-checkpoint {ckpt_dir}: the path does not exist")
    if v["hf_config"] is None:
        v["hf_config"] = ckpt_dir
        if ckpt_dir is None or not os.path.exists(os.path.join(ckpt_dir, "config.json")):
            raise ArgumentError("--hf-config is required (no config.json next to --pretrained-checkpoint)")
    if v["tokenizer"] is None and ckpt_dir and os.path.exists(os.path.join(ckpt_dir, "tokenizer_config.json")):
        v["tokenizer"] = ckpt_dir
    return v, warnings


# ----------------------------------------------------------------------------- stage 2: the model


def for_model(cfg: RunConfig, hf_config: dict) -> RunConfig:
    """Checks against the HF config and the virtual pipeline size from its layer count."""
    from megatron_autoalign.models import check_model_size, check_tensor_parallel

    check_model_size(cfg.model.model_size, hf_config)
    check_tensor_parallel(hf_config, cfg.parallel.tensor_model_parallel_size)
    vpp, per_stage = None, cfg.parallel.num_layers_per_virtual_pipeline_stage
    if per_stage:
        layers, pp = hf_config["num_hidden_layers"], cfg.parallel.pipeline_model_parallel_size
        if layers % (pp * per_stage):
            raise ArgumentError(f"{layers} layers do not split into PP {pp} x {per_stage} layers per virtual stage")
        vpp = layers // (pp * per_stage)
    return cfg.replace(parallel={"virtual_pipeline_model_parallel_size": vpp})


# ----------------------------------------------------------------------------- stage 3: the data


def row_tokens(data: DataConfig, manifest: dict) -> int:
    """Tokens per sequence row: ``--seq-length`` (default: the data's), padded up to ``--max-padding-length``."""
    seq = data.seq_length or int(manifest["seq_len"])
    padded = data.max_padding_length or seq
    if padded < seq:
        raise ValueError(f"--max-padding-length {padded} is shorter than --seq-length {seq}")
    return padded


def for_data(cfg: RunConfig, manifest: dict, num_train_samples: int, has_validation: bool) -> RunConfig:
    """Sequence length, iterations and LR decay once the training data is known."""
    t, o = cfg.training, cfg.optimizer
    row_tokens(cfg.data, manifest)  # the padding check
    seq_length = cfg.data.seq_length or int(manifest["seq_len"])
    train_iters = t.train_iters
    if train_iters is None:  # the start-up prints how it was derived
        train_iters = max(1, t.epochs * num_train_samples // t.global_batch_size)
    decay = o.lr_decay_iters if o.lr_decay_iters is not None else train_iters
    if o.lr_warmup_fraction is None and o.lr_warmup_iters >= decay > 0 and o.lr_decay_style != "constant":
        raise ArgumentError(f"--lr-warmup-iters {o.lr_warmup_iters} must be smaller than the decay iterations {decay}")
    warnings = cfg.warnings
    if t.eval_interval and not has_validation:
        warnings += (f"--eval-interval {t.eval_interval} has no effect: no validation data "
                     f"(--split {cfg.data.split} leaves none and there is no --valid-data-path)",)
    out = cfg.replace(data={"seq_length": seq_length}, training={"train_iters": train_iters},
                      optimizer={"lr_decay_iters": decay})
    return dataclasses.replace(out, warnings=warnings)
