"""The preference-loss family on per-sequence log-probabilities (pure torch, no parallelism).

Inputs per pair: policy log-probs of chosen/rejected summed over the reply's trained tokens, the
number of those tokens, and (except SimPO) the reference model's summed log-probs of the same tokens.

Definitions (h is the "implicit reward margin", beta the inverse temperature):
- sigmoid (DPO, Rafailov et al. 2023): h = (pc - rc) - (pr - rr); loss = -log sigmoid(beta*h).
  With label_smoothing eps (cDPO, conservative DPO): -(1-eps) log s(beta*h) - eps log s(-beta*h).
- ipo (Azar et al. 2023): (h - 1/(2*beta))^2 with h on LENGTH-AVERAGED log-probs. The IPO authors
  average per token; TRL switched to averaging after consulting them (HF blog "pref-tuning" addendum),
  so common practice is averaging, and so is this.
- hinge (SLiC, Zhao et al. 2023): relu(1 - beta*h).
- rpo (Pang et al. 2024): sigmoid DPO (label smoothing honoured) + alpha * NLL of the chosen reply,
  the NLL being length-normalised: -pc / |chosen trained tokens|.
- simpo (Meng et al. 2024), reference-free: -log sigmoid(beta*pc/|yc| - beta*pr/|yr| - gamma).

Rewards (logged): beta * (the log-ratio the loss uses) per reply; for SimPO beta * average log-prob.
Reward accuracy = chosen reward > rejected reward (ties count as wrong); margin = chosen - rejected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .flags import LOSS_TYPES  # declared with the flags (importable without torch)

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
           "logps/chosen", "logps/rejected")


@dataclass(frozen=True)
class PreferenceLossConfig:
    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0   # cDPO epsilon (sigmoid, rpo)
    rpo_alpha: float = 1.0         # weight of the chosen NLL in rpo
    simpo_gamma: float = 0.5       # target reward margin of simpo

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {self.loss_type!r}; known: {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (got {self.beta})")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label smoothing must be in [0, 0.5) (got {self.label_smoothing})")
        if self.label_smoothing and self.loss_type not in ("sigmoid", "rpo"):
            raise ValueError(f"label smoothing applies to sigmoid/rpo only, not {self.loss_type}")

    @property
    def needs_reference(self) -> bool:
        return self.loss_type != "simpo"


def preference_loss(cfg: PreferenceLossConfig, policy_chosen, policy_rejected, len_chosen, len_rejected,
                    ref_chosen=None, ref_rejected=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses [P] and per-pair metrics {name: [P]} (metrics detached, fp32)."""
    pc, pr = policy_chosen.float(), policy_rejected.float()
    nc, nr = len_chosen.to(pc.dtype), len_rejected.to(pc.dtype)
    if cfg.needs_reference:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"loss {cfg.loss_type} needs reference log-probs")
        rc, rr = ref_chosen.to(pc.dtype), ref_rejected.to(pc.dtype)
    b = cfg.beta
    if cfg.loss_type == "simpo":
        chosen_ratio, rejected_ratio = pc / nc, pr / nr
    elif cfg.loss_type == "ipo":
        chosen_ratio, rejected_ratio = (pc - rc) / nc, (pr - rr) / nr
    else:
        chosen_ratio, rejected_ratio = pc - rc, pr - rr
    h = chosen_ratio - rejected_ratio

    if cfg.loss_type in ("sigmoid", "rpo"):
        eps = cfg.label_smoothing
        losses = -(1 - eps) * F.logsigmoid(b * h) - eps * F.logsigmoid(-b * h)
        if cfg.loss_type == "rpo":
            losses = losses + cfg.rpo_alpha * (-pc / nc)
    elif cfg.loss_type == "ipo":
        losses = (h - 1 / (2 * b)) ** 2
    elif cfg.loss_type == "hinge":
        losses = torch.relu(1 - b * h)
    else:  # simpo
        losses = -F.logsigmoid(b * h - cfg.simpo_gamma)

    with torch.no_grad():
        rew_c, rew_r = b * chosen_ratio.detach(), b * rejected_ratio.detach()
        metrics = {
            "rewards/chosen": rew_c,
            "rewards/rejected": rew_r,
            "rewards/accuracy": (rew_c > rew_r).to(pc.dtype),
            "rewards/margin": rew_c - rew_r,
            "logps/chosen": pc.detach(),
            "logps/rejected": pr.detach(),
        }
    return losses, metrics
