"""Objectives for adapting without labels, on the device's output spike counts only.

In the field nobody labels the inputs, but the device's outputs still say something: a
network that a drift confuses spreads its spikes over several classes (high entropy per
sample), and one that a drift biases sends most samples to a few classes (low entropy of the
mean prediction).  Information maximisation rewards the opposite of both: confident
predictions that still use every class.  Both terms are forward-only functions of the counts
a device returns, so PolyStep can optimise them on the chip.  An anchor to the starting
network's own outputs (the adaptation loop's ``anchor_weight``) keeps what it did on inputs
the drift did not touch.

Every objective here has the loss signature ``(counts (V, B, C), targets (B,)) -> (V,)`` and
ignores ``targets``, so it runs through the same loop as a labelled loss.
"""

from __future__ import annotations

import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, LossFn

OBJECTIVES = ("im", "entropy")
# Weight of the class-balance term in information maximisation, chosen on the label-free
# bench's tuned corruptions (digits; docs/benchmarks.md, section 12): at 1 a drift that sends
# most samples to one class was left there (a user's 4-class sensor network: 48 % of the
# drifted samples to one class, the run moved it to 47.6 %) and 13 of 60 digits runs handed
# back a network less accurate than the start; at 1.5, 4 of 60.
BALANCE_WEIGHT = 1.5
DEFAULT_OBJECTIVE = "im"
# adapt --label-free / label_free=True with clean replay: refused, since replay brings labels
NO_REPLAY = (
    "a label-free run takes no replay: clean replay comes with labels, and a run that has "
    "labels adapts to them (drop --label-free / label_free=True, or the replay)"
)


def _probabilities(counts: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if counts.ndim != 3:
        raise PolystepError(f"counts must be (V, B, C), got shape {tuple(counts.shape)}")
    logp = torch.log_softmax(counts.to(torch.float32) * scale, dim=-1)
    return logp.exp(), logp


def prediction_entropy(counts: torch.Tensor, scale: float = COUNT_LOGIT_SCALE) -> torch.Tensor:
    """Mean entropy of each sample's predicted class distribution: (V,)."""
    p, logp = _probabilities(counts, scale)
    return -(p * logp).sum(-1).mean(1)


def class_balance(counts: torch.Tensor, scale: float = COUNT_LOGIT_SCALE) -> torch.Tensor:
    """Entropy of the batch's mean prediction: high when every class is used, (V,)."""
    p, _ = _probabilities(counts, scale)
    mean = p.mean(1)
    return -(mean * torch.log(mean.clamp_min(1e-12))).sum(-1)


def information_maximisation(
    counts: torch.Tensor, scale: float = COUNT_LOGIT_SCALE, balance: float = BALANCE_WEIGHT
) -> torch.Tensor:
    """Mean per-sample entropy minus ``balance`` times the entropy of the mean prediction:
    low for confident predictions that keep using every class, (V,)."""
    return prediction_entropy(counts, scale) - balance * class_balance(counts, scale)


def make_objective(name: str = DEFAULT_OBJECTIVE, scale: float = COUNT_LOGIT_SCALE) -> LossFn:
    """A label-free objective by name, with the loss signature (``targets`` are ignored)."""
    if name == "im":
        return lambda counts, targets: information_maximisation(counts, scale)
    if name == "entropy":
        return lambda counts, targets: prediction_entropy(counts, scale)
    raise PolystepError(
        f"unknown label-free objective {name!r}; choose one of {', '.join(OBJECTIVES)}"
    )
