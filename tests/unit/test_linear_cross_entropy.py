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


def test_model_skips_untrained_tokens_exactly(tiny_tied_dir):
    """Tokens labelled -100 get loss 0 and no gradient; the rest equal the unfused path."""
    from megatron_autoalign.models import build_gpt_model, load_hf_config, transformer_config_from_hf
    from megatron_autoalign.runtime import init_distributed

    init_distributed(1, 1)
    cfg = load_hf_config(tiny_tied_dir)
    tconfig = transformer_config_from_hf(cfg)
    tokens = torch.randint(0, 151000, (2, 12), generator=torch.Generator().manual_seed(4))
    labels = tokens[:, 1:].clone()
    labels[0, :5] = -100
    labels[1, :] = -100  # a row with nothing to train
    positions = torch.arange(11).expand(2, 11)
    results = []
    for fused in (True, False):
        torch.manual_seed(3)
        model = build_gpt_model(cfg, tconfig, fused_linear_cross_entropy=fused)
        mask = labels != -100
        loss = model(tokens[:, :-1], positions, None, labels=labels if fused else labels.masked_fill(~mask, 0))
        loss = loss * mask
        loss.sum().backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fused_loss, fused_grads), (ref_loss, ref_grads) = results
    assert (fused_loss[~(labels != -100)] == 0).all()
    torch.testing.assert_close(fused_loss, ref_loss, atol=1e-5, rtol=0)
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_empty_selection_still_backpropagates():
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    losses = linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    losses.sum().backward()
    assert losses.shape == (0,) and weight.grad is not None and (weight.grad == 0).all()
