"""How PolyStep turns each step's direction into a move of the parameters (the update rule).

Each step's direction ``g`` is the weighted mean of the probed vertex directions, lifted to
parameter space.  The rules here are the functional half (as torch.optim's functional
updates are): pure functions of the direction and the rule's state, which PolyStep keeps
and checkpoints.

- ``heavy-ball``: ``v = mu v + r g; x += v`` (PolyStep's own).
- ``torque``: heavy-ball whose new direction counts by the angle it makes with the velocity,
  ``(1 + cos) / 2`` (Torque-Aware Momentum, Malviya et al. 2024, without its smoothing of
  the cosine): a direction that turns back against the velocity is damped.
- ``adam``: per-parameter normalisation by Adam's moments (what OpenAI-ES applies to its
  gradient estimate): every parameter moves about ``r`` per step along a steady direction,
  whatever the size of its share of the direction.
- ``adan``: Adan's Nesterov momentum estimate (Xie et al. 2022): Adam's normalisation of
  the first moment plus a moment of the direction's change.
"""

from __future__ import annotations

import torch

RULES = ("heavy-ball", "torque", "adam", "adan")
NORMALISED = ("adam", "adan")  # the rules that move every parameter by the step itself
ADAM_BETAS = (0.9, 0.999)
# Adan's defaults (its weights on the new values, not the decays).
ADAN_BETAS = (0.02, 0.08, 0.01)
_EPS = 1e-8


def heavy_ball(velocity: torch.Tensor, move: torch.Tensor, momentum: float) -> torch.Tensor:
    """The new velocity (the step) for a move already scaled by the radius."""
    return momentum * velocity + move


def torque(velocity: torch.Tensor, move: torch.Tensor, momentum: float) -> torch.Tensor:
    """Heavy-ball with the move weighted by ``(1 + cos(velocity, move)) / 2``."""
    norms = float(velocity.norm()) * float(move.norm())
    agreement = float(velocity @ move) / norms if norms > 0 else 1.0
    return momentum * velocity + 0.5 * (1.0 + agreement) * move


def adam(
    first: torch.Tensor, second: torch.Tensor, direction: torch.Tensor, beta1: float, t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, unit step): the step per parameter is ``m_hat / (sqrt(v_hat) + eps)``,
    about 1 along a steady direction (``t``: this step's number, from 1)."""
    beta2 = ADAM_BETAS[1]
    first = beta1 * first + (1 - beta1) * direction
    second = beta2 * second + (1 - beta2) * direction * direction
    m_hat = first / (1 - beta1**t)
    v_hat = second / (1 - beta2**t)
    return first, second, m_hat / (v_hat.sqrt() + _EPS)


def adan(
    first: torch.Tensor,
    diff: torch.Tensor,
    second: torch.Tensor,
    last: torch.Tensor | None,
    direction: torch.Tensor,
    t: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, diff, second, unit step) of Adan with its bias corrections."""
    b1, b2, b3 = ADAN_BETAS
    change = torch.zeros_like(direction) if last is None else direction - last
    first = (1 - b1) * first + b1 * direction
    diff = (1 - b2) * diff + b2 * change
    second = (1 - b3) * second + b3 * (direction + (1 - b2) * change) ** 2
    m_hat = first / (1 - (1 - b1) ** t)
    d_hat = diff / (1 - (1 - b2) ** t)
    v_hat = second / (1 - (1 - b3) ** t)
    return first, diff, second, (m_hat + (1 - b2) * d_hat) / (v_hat.sqrt() + _EPS)
