"""Load a checkpoint this project wrote with upstream Megatron-LM's OWN code, then check the model.

Run in a fresh process with a Megatron-LM checkout first on sys.path (``MEGATRON_LM_PATH``):

    python upstream_loader_worker.py HF_DIR LOAD_DIR OUT_JSON [--use-checkpoint-args [--no-norm-epsilon]]

Upstream code that runs: ``megatron.training.arguments.parse_args`` / ``validate_args``,
``megatron.training.checkpointing.load_args_from_checkpoint`` (with ``--use-checkpoint-args``),
``megatron.training.global_vars.set_global_variables``, ``model_provider.model_provider`` with
``gpt_builders.gpt_builder`` (local spec) and ``megatron.training.checkpointing.load_checkpoint``
(``check_checkpoint_args``, strict dist-checkpoint load under the default ``--dist-ckpt-strictness``).
Flags: upstream's ``examples/post_training/modelopt/conf/Qwen/Qwen2.5-*-Instruct.sh`` model flags with the
tiny model's shape, plus ``--no-load-optim --no-load-rng`` (as Pai-Megatron-Patch fine-tuning runs do).
The loaded model is then compared with the HF model (weights and a forward) and the result written as JSON.
"""

import json
import os
import sys
import types


def _stub_triton_kernels() -> None:
    # megatron.training.initialize imports a Triton kernel module at import time (batch-invariant mode,
    # GPU only, never used here); Triton is not installed on the CPU CI box.
    name = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
    stub = types.ModuleType(name)
    stub.enable_batch_invariant_mode = None
    sys.modules[name] = stub


def _rope_theta(hf: dict) -> float:
    # transformers 5 writes rope_parameters.rope_theta; older configs a top-level rope_theta (HF default 10000)
    return (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))


def upstream_flags(hf: dict, load_dir: str, use_checkpoint_args: bool, norm_epsilon: bool = True) -> list:
    """The Qwen2.5 example's model flags with the tiny model's numbers (all of them, or with
    --use-checkpoint-args only what it does not copy from the checkpoint: --norm-epsilon is not copied)."""
    common = ["--micro-batch-size", "1", "--seq-length", "16", "--ckpt-format", "torch_dist", "--load", load_dir,
              "--no-load-optim", "--no-load-rng", "--transformer-impl", "local", "--use-cpu-initialization",
              "--tokenizer-type", "NullTokenizer", "--vocab-size", str(hf["vocab_size"]),
              "--no-masked-softmax-fusion", "--no-rope-fusion", "--no-bias-swiglu-fusion",
              "--no-gradient-accumulation-fusion", "--no-persist-layer-norm", "--attention-backend", "unfused",
              "--distributed-backend", "gloo"]
    epsilon = ["--norm-epsilon", str(hf["rms_norm_eps"])] if norm_epsilon else []
    if use_checkpoint_args:
        return common + ["--use-checkpoint-args"] + epsilon
    model = ["--num-layers", str(hf["num_hidden_layers"]), "--hidden-size", str(hf["hidden_size"]),
             "--ffn-hidden-size", str(hf["intermediate_size"]), "--num-attention-heads", str(hf["num_attention_heads"]),
             "--group-query-attention", "--num-query-groups", str(hf["num_key_value_heads"]),
             "--kv-channels", str(hf["hidden_size"] // hf["num_attention_heads"]),
             "--max-position-embeddings", str(hf["max_position_embeddings"]),
             "--position-embedding-type", "rope", "--rotary-percent", "1.0",
             "--rotary-base", str(int(_rope_theta(hf))), "--normalization", "RMSNorm",
             *epsilon, "--swiglu", "--disable-bias-linear", "--add-qkv-bias",
             "--padded-vocab-size", str(hf["vocab_size"]), "--make-vocab-size-divisible-by", "1",
             "--attention-dropout", "0.0", "--hidden-dropout", "0.0"]
    if not hf.get("tie_word_embeddings", True):
        model.append("--untie-embeddings-and-output-weights")
    return common + model


def main(hf_dir: str, load_dir: str, out_json: str, use_checkpoint_args: bool, norm_epsilon: bool) -> None:
    import torch

    _stub_triton_kernels()
    from megatron.training import checkpointing, global_vars
    from megatron.training.arguments import parse_args, validate_args

    from megatron_autoalign.runtime import init_distributed

    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    sys.argv = ["pretrain_gpt.py", *upstream_flags(hf, load_dir, use_checkpoint_args, norm_epsilon)]
    args = parse_args()
    if use_checkpoint_args:
        checkpointing.load_args_from_checkpoint(args)  # what initialize_megatron does before validate_args
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    validate_args(args)
    global_vars.set_global_variables(args, build_tokenizer=False)
    init_distributed(1, 1)  # gloo + megatron-core's groups, CPU redirects (runtime/cpu_compat.py)
    args.params_dtype = torch.float32

    import gpt_builders
    import model_provider

    model = model_provider.model_provider(gpt_builders.gpt_builder, pre_process=True, post_process=True)
    iteration, _ = checkpointing.load_checkpoint([model], None, None, strict=True)
    model.eval()

    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, hf["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        ours = model(ids, position_ids, attention_mask=None).float()
        theirs = reference(ids).logits.float()
    hf_sd = reference.state_dict()
    p = dict(model.named_parameters())
    # Tensors that map one-to-one (the fused qkv / fc1 layouts are covered by the forward).
    pairs = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
             "decoder.final_layernorm.weight": "model.norm.weight"}
    for i in range(hf["num_hidden_layers"]):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        pairs.update({m + "self_attention.linear_qkv.layer_norm_weight": h + "input_layernorm.weight",
                      m + "input_layernorm.weight": h + "input_layernorm.weight",
                      m + "pre_mlp_layernorm.weight": h + "post_attention_layernorm.weight",
                      m + "mlp.linear_fc1.layer_norm_weight": h + "post_attention_layernorm.weight",
                      m + "self_attention.linear_proj.weight": h + "self_attn.o_proj.weight",
                      m + "mlp.linear_fc2.weight": h + "mlp.down_proj.weight"})
    if "output_layer.weight" in p:
        pairs["output_layer.weight"] = "lm_head.weight"
    diffs = {mg: (p[mg].detach() - hf_sd[h]).abs().max().item() for mg, h in pairs.items() if mg in p}
    result = dict(iteration=iteration, num_params=len(p), compared=len(diffs), max_weight_diff=max(diffs.values()),
                  max_logits_diff=(ours - theirs).abs().max().item(), logits_scale=theirs.abs().max().item(),
                  num_layers=args.num_layers, untied=args.untie_embeddings_and_output_weights,
                  add_position_embedding=args.add_position_embedding, rotary_base=args.rotary_base,
                  layernorm_epsilon=args.layernorm_epsilon)
    with open(out_json, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--use-checkpoint-args" in sys.argv[4:],
         "--no-norm-epsilon" not in sys.argv[4:])
