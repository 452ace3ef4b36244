"""megatron-core's activation recompute (``RECOMPUTE=full|selective`` in sft_conv.sh) through the local spec:
the core attention with its per-micro-batch layout, the SwiGLU hook and the linear cross-entropy must give
the same loss and gradients as without recompute (fp32, 1e-6), on packed documents."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_process_group():
    yield
    from megatron_autoalign.runtime import destroy_distributed

    destroy_distributed()


def _loss_and_grads(hf_dir, recompute_activation=False, **recompute):
    from megatron_autoalign.checkpoint.torch_dist import ensure_process_group
    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.models.attention import PackedDocuments
    from megatron_autoalign.checkpoint.sharded import load_hf_weights_into_model

    ensure_process_group()
    cfg = load_hf_config(hf_dir)
    model = build_gpt_model(cfg, transformer_config_from_hf(cfg, torch.float32, **recompute),
                            recompute_activation=recompute_activation)
    load_hf_weights_into_model(model, hf_dir)
    torch.manual_seed(0)
    bounds = (0, 5, 13, 24)  # three documents packed in one row
    tokens = torch.randint(0, cfg["vocab_size"], (1, 25))
    positions = torch.cat([torch.arange(e - s) for s, e in zip(bounds[:-1], bounds[1:])])[None]
    cu = torch.tensor(bounds, dtype=torch.int32)
    packed = PackedDocuments(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=11,
                             max_seqlen_kv=11, boundaries=bounds)
    model.train()
    losses = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:], packed_seq_params=packed)
    losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute_activation,recompute", [
    (False, dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)),
    (False, dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=2)),
    (True, dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2)),
    (False, dict(recompute_granularity="selective")),
])
def test_megatron_recompute_gives_the_same_gradients(tiny_4layer_dir, recompute_activation, recompute, monkeypatch):
    from megatron.core import tensor_parallel

    loss_ref, grads_ref = _loss_and_grads(tiny_4layer_dir)
    calls = []
    checkpoint = tensor_parallel.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(tensor_parallel, "checkpoint", counted)
    loss, grads = _loss_and_grads(tiny_4layer_dir, recompute_activation, **recompute)
    assert calls, "megatron's recompute did not run"
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-6, msg=name)
