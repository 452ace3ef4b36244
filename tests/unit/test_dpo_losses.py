"""The loss family against plain formulas written from the papers (scalar python math, one pair at a time).

IPO uses length-AVERAGED log-ratios (the IPO authors' and TRL's practice); every other loss uses sums.
Tolerance 1e-5 absolute in fp32 (scalar math is float64; values are O(1)).
"""
import math

import pytest
import torch

from megatron_autoalign.dpo.losses import PreferenceLossConfig, preference_loss


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def expected(kind, beta, pc, pr, rc, rr, nc, nr, eps=0.0, alpha=1.0, gamma=0.5):
    """(loss, chosen reward, rejected reward) for one pair, straight from the definitions."""
    if kind == "simpo":
        cr, rj = beta * pc / nc, beta * pr / nr
        return -logsig(cr - rj - gamma), cr, rj
    if kind == "ipo":
        hc, hr = (pc - rc) / nc, (pr - rr) / nr
        return (hc - hr - 1 / (2 * beta)) ** 2, beta * hc, beta * hr
    h = (pc - rc) - (pr - rr)
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    if kind == "hinge":
        return max(0.0, 1 - beta * h), cr, rj
    loss = -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)  # DPO; cDPO when eps > 0
    if kind == "rpo":
        loss += alpha * (-pc / nc)
    return loss, cr, rj


CASES = [("sigmoid", {}), ("sigmoid", {"label_smoothing": 0.2}), ("ipo", {}), ("hinge", {}),
         ("rpo", {"rpo_alpha": 0.7}), ("rpo", {"rpo_alpha": 1.0, "label_smoothing": 0.1}), ("simpo", {"simpo_gamma": 0.3})]


@pytest.mark.parametrize("kind,extra", CASES)
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_losses_and_metrics_match_formulas(kind, extra, beta):
    g = torch.Generator().manual_seed(0)
    P = 16
    pc, pr = -30 * torch.rand(P, generator=g) - 1, -30 * torch.rand(P, generator=g) - 1
    rc, rr = pc + 3 * torch.randn(P, generator=g), pr + 3 * torch.randn(P, generator=g)
    nc, nr = torch.randint(1, 40, (P,), generator=g), torch.randint(1, 40, (P,), generator=g)
    cfg = PreferenceLossConfig(kind, beta, **extra)
    losses, m = preference_loss(cfg, pc, pr, nc, nr, rc, rr)
    kw = {"eps": extra.get("label_smoothing", 0.0), "alpha": extra.get("rpo_alpha", 1.0),
          "gamma": extra.get("simpo_gamma", 0.5)}
    for i in range(P):
        loss, cr, rj = expected(kind, beta, *(float(t[i]) for t in (pc, pr, rc, rr, nc, nr)), **kw)
        assert losses[i].item() == pytest.approx(loss, abs=1e-5)
        assert m["rewards/chosen"][i].item() == pytest.approx(cr, abs=1e-5)
        assert m["rewards/rejected"][i].item() == pytest.approx(rj, abs=1e-5)
        assert m["rewards/margin"][i].item() == pytest.approx(cr - rj, abs=1e-5)
        assert m["rewards/accuracy"][i].item() == float(cr > rj)
    assert 0 < m["rewards/accuracy"].mean() < 1  # the random case exercises both outcomes


def test_gradient_is_the_formula_gradient():
    """d loss / d policy log-probs for sigmoid DPO: -beta * (1 - sigmoid(beta*h)) on chosen, opposite on rejected."""
    pc, pr = torch.tensor([-5.0, -9.0], requires_grad=True), torch.tensor([-7.0, -2.0], requires_grad=True)
    rc, rr = torch.tensor([-6.0, -8.0]), torch.tensor([-6.5, -3.0])
    n = torch.tensor([4, 4])
    losses, _ = preference_loss(PreferenceLossConfig("sigmoid", 0.5), pc, pr, n, n, rc, rr)
    losses.sum().backward()
    h = (pc - rc - (pr - rr)).detach()
    want = -0.5 * (1 - torch.sigmoid(0.5 * h))
    torch.testing.assert_close(pc.grad, want)
    torch.testing.assert_close(pr.grad, -want)


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown loss type 'kto'"):
        PreferenceLossConfig("kto")
    with pytest.raises(ValueError, match="beta must be > 0"):
        PreferenceLossConfig("sigmoid", beta=0)
    with pytest.raises(ValueError, match="label smoothing applies to sigmoid/rpo only"):
        PreferenceLossConfig("ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss(PreferenceLossConfig("sigmoid"), torch.zeros(1), torch.zeros(1), torch.ones(1), torch.ones(1))
