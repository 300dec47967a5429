"""Losses on spike counts, computed on the host for every parameter set at once.

counts: (V, B, C) spike counts of the output layer; targets: (B,) class labels.
Each loss returns one value per parameter set, shape (V,), which is what PolyStep's
``tell`` takes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from polystep_neuro.core.errors import PolystepError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Spike counts times this are the logits of the count cross-entropy everywhere in the tool
# (a count difference of 2 spikes is a factor e in the odds).
COUNT_LOGIT_SCALE = 0.5


def _check(counts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if counts.ndim != 3:
        raise PolystepError(f"counts must be (V, B, C), got shape {tuple(counts.shape)}")
    if targets.shape != counts.shape[1:2]:
        raise PolystepError(
            f"targets must be ({counts.shape[1]},) to match counts {tuple(counts.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    return counts.to(torch.float32)


def count_cross_entropy(
    counts: torch.Tensor, targets: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """Cross-entropy with the spike counts (times ``scale``) as logits, mean over the batch."""
    logits = _check(counts, targets) * scale
    logp = torch.log_softmax(logits, dim=-1)
    idx = targets.to(logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return -logp.gather(-1, idx).squeeze(-1).mean(dim=1)


def distillation(
    counts: torch.Tensor, teacher: torch.Tensor, scale: float = COUNT_LOGIT_SCALE
) -> torch.Tensor:
    """Cross-entropy from the teacher's output distribution (its counts (B, C) as logits)
    to each parameter set's, mean over the batch: (V,).  Zero gradient where the candidate
    already reproduces the teacher's distribution; forward passes only."""
    logits = _check(counts, torch.zeros(counts.shape[1], device=counts.device)) * scale
    target = torch.softmax(teacher.to(logits.device, torch.float32) * scale, dim=-1)
    return -(target.unsqueeze(0) * torch.log_softmax(logits, dim=-1)).sum(-1).mean(dim=1)


def outside_trust_region(
    candidates: torch.Tensor, start: torch.Tensor, radius: float
) -> torch.Tensor:
    """A cost on each candidate's distance from ``start`` beyond ``radius`` (RMS per
    parameter, in the layout's units): steep enough that no loss gain pays for leaving."""
    distance = (candidates - start.to(candidates)).pow(2).mean(dim=1).sqrt()
    return 100.0 * torch.relu(distance / radius - 1.0)


def accuracy(counts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose target neuron spiked strictly more than every other.

    A tie (e.g. a silent output layer) counts as wrong, so a dead network scores 0, not
    the frequency of class 0.
    """
    c = _check(counts, targets)
    return (decisions(c) == targets.to(c.device).view(1, -1)).to(torch.float32).mean(dim=1)


def decisions(counts: torch.Tensor) -> torch.Tensor:
    """Each sample's class as :func:`accuracy` reads it, over the last dim of ``counts``: the
    output neuron that spiked strictly more than every other, -1 for a tie (so two tied
    samples agree, and agreement bounds an accuracy gap)."""
    best = counts.argmax(dim=-1)
    if counts.shape[-1] < 2:
        return best
    top = counts.topk(2, dim=-1).values
    return torch.where(top[..., 0] > top[..., 1], best, torch.full_like(best, -1))


def rate_mse(
    counts: torch.Tensor, targets: torch.Tensor, num_steps: int, on: float = 0.6, off: float = 0.05
) -> torch.Tensor:
    """Mean squared error between firing rates (counts / T) and a target rate code."""
    c = _check(counts, targets) / float(num_steps)
    want = torch.full_like(c[0], off)
    want.scatter_(-1, targets.to(c.device).view(-1, 1), on)
    return ((c - want) ** 2).mean(dim=(1, 2))


def make_loss(name: str, num_steps: int, scale: float = 1.0) -> LossFn:
    """A loss by name: "ce" (cross-entropy on counts) or "mse" (rate MSE)."""
    if name == "ce":
        return lambda counts, targets: count_cross_entropy(counts, targets, scale)
    if name == "mse":
        return lambda counts, targets: rate_mse(counts, targets, num_steps)
    raise PolystepError(f"unknown loss {name!r}; choose 'ce' or 'mse'")
