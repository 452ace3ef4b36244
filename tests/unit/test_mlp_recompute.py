"""The MLP that recomputes its SwiGLU output in the backward gives the same loss and gradients, and its
activation storage is released after the forward."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


def _loss_and_grads(hf_dir, recompute):
    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.checkpoint.sharded import load_hf_weights_into_model

    ensure_process_group()
    cfg = load_hf_config(hf_dir)
    model = build_gpt_model(cfg, transformer_config_from_hf(cfg, torch.float32), recompute_activation=recompute)
    load_hf_weights_into_model(model, hf_dir)
    recomputing = [layer.mlp.recompute_activation for layer in model.decoder.layers]
    if isinstance(recompute, bool):
        assert recomputing == [recompute] * 4
    else:  # the model's first N layers
        assert recomputing == [i < recompute for i in range(4)]
    torch.manual_seed(0)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 17))
    positions = torch.arange(16).expand(2, 16)
    losses = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:])
    losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute", [True, 3])  # every layer / the first 3 of 4
def test_recomputed_swiglu_gives_identical_gradients(tiny_4layer_dir, recompute):
    loss_kept, grads_kept = _loss_and_grads(tiny_4layer_dir, recompute=False)
    loss_recomputed, grads_recomputed = _loss_and_grads(tiny_4layer_dir, recompute=recompute)
    torch.testing.assert_close(loss_recomputed, loss_kept, rtol=0, atol=0)
    assert grads_kept.keys() == grads_recomputed.keys()
    for name, grad in grads_kept.items():
        torch.testing.assert_close(grads_recomputed[name], grad, rtol=0, atol=0, msg=name)


def test_activation_storage_is_released_until_backward():
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.mlp import MLPSubmodules
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from megatron_autoalign.models.mlp import Qwen2MLP
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    config = TransformerConfig(num_layers=1, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
                               gated_linear_unit=True, activation_func=torch.nn.functional.silu,
                               add_bias_linear=False, bias_activation_fusion=False, use_cpu_initialization=True)
    mlp = Qwen2MLP(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
                   recompute_activation=True)
    seen = []
    mlp.linear_fc2.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    out, _ = mlp(torch.randn(5, 1, 8, requires_grad=True))
    assert seen[0].untyped_storage().size() == 0  # released after fc2's forward
    out.sum().backward()
    assert seen[0].untyped_storage().size() > 0  # recomputed for fc2's weight gradient


def test_recompute_swiglu_is_refused_on_the_transformer_engine_path(monkeypatch, tiny_4layer_dir):
    """Where Transformer Engine imports, 'auto' picks its spec, which has no SwiGLU recompute: the trainer's
    model builder must refuse --recompute-swiglu with one line instead of silently keeping the activation.
    TE is simulated (this machine has none); the refusal comes before any TE module is touched."""
    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import ConfigError, builder, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.training.config import parse_run_config
    from megatron_autoalign.training.model_and_optimizer import build_model

    def run_config(*flags):  # the trainer's config of these flags
        return parse_run_config(["--data-path", "unused", "--hf-config", tiny_4layer_dir, *flags], world_size=1)

    ensure_process_group()
    monkeypatch.setattr(builder, "transformer_engine_available", lambda: True)
    cfg = load_hf_config(tiny_4layer_dir)
    config = transformer_config_from_hf(cfg, torch.float32)
    for layers in ([], ["3"]):  # --recompute-swiglu alone: every layer
        args = run_config("--transformer-impl", "auto", "--recompute-swiglu", *layers)
        with pytest.raises(ConfigError, match=r"^--recompute-swiglu works with the local spec only, but Transformer "
                                              r"Engine was chosen; add --transformer-impl local") as e:
            build_model(args, cfg, config)
        assert "\n" not in str(e.value)
    # the local spec still takes it (what the message tells the user to choose)
    args = run_config("--transformer-impl", "local", "--recompute-swiglu", "3")
    chunk, = build_model(args, cfg, config)
    assert [layer.mlp.recompute_activation for layer in chunk.decoder.layers] == [True, True, True, False]
