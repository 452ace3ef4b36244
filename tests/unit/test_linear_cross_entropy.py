"""The chunked linear cross-entropy equals logits -> torch cross_entropy, value and gradients (fp64)."""

import pytest
import torch
import torch.nn.functional as F

from megatron_autoalign.models.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_matches_reference_loss_and_grads(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (13,))
    labels[[2, 5]] = -100
    upstream = torch.rand(13, dtype=torch.float64)

    losses = linear_cross_entropy(hidden, weight, labels, chunk_size=chunk)
    (losses * upstream).sum().backward()
    got = (losses.detach().clone(), hidden.grad.clone(), weight.grad.clone())

    hidden.grad = weight.grad = None
    ref = F.cross_entropy(hidden @ weight.t(), labels, reduction="none", ignore_index=-100)
    (ref * upstream).sum().backward()
    assert got[0][2] == 0 and got[0][5] == 0
    torch.testing.assert_close(got[0], ref.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(got[1], hidden.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(got[2], weight.grad, atol=1e-10, rtol=0)


def test_model_loss_and_grads_match_unfused_path(tiny_tied_dir):
    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    cfg = load_hf_config(tiny_tied_dir)
    tconfig = transformer_config_from_hf(cfg)
    results = []
    for fused in (True, False):
        torch.manual_seed(3)
        model = build_gpt_model(cfg, tconfig, fused_linear_cross_entropy=fused)
        tokens = torch.randint(0, 151000, (2, 12), generator=torch.Generator().manual_seed(1))
        positions = torch.arange(12).expand(2, 12)
        loss = model(tokens[:, :-1], positions[:, :-1], None, labels=tokens[:, 1:])
        loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (fused_loss, fused_grads), (ref_loss, ref_grads) = results
    torch.testing.assert_close(fused_loss, ref_loss, atol=1e-5, rtol=0)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
