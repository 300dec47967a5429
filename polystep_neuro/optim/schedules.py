"""Schedules for epsilon and the two radii, evaluated at the step index.

Flat schedules are the default because the reference's sweeps found a cosine decay
collapsed SNN accuracy; the cosine schedule is there for smooth test functions, where
shrinking radii let the search settle into a minimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    """The same value at every step."""

    value: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"Constant schedule value must be finite, got {self.value}")

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Cosine:
    """Half-cosine from ``initial`` (step 0) to ``target`` (step ``total_steps`` and after)."""

    initial: float
    target: float
    total_steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and math.isfinite(self.target)):
            raise ValueError(
                f"Cosine schedule values must be finite, got {self.initial}, {self.target}"
            )
        if self.total_steps < 1:
            raise ValueError(f"Cosine total_steps must be at least 1, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.total_steps) / self.total_steps
        return self.target + (self.initial - self.target) * 0.5 * (1.0 + math.cos(math.pi * frac))


Schedule = Callable[[int], float]


def as_schedule(value: float | Schedule, name: str) -> Schedule:
    """Wrap a number as a :class:`Constant`; check that the schedule starts positive.

    Known schedules are checked over their whole range here; any other callable is checked
    each time it is evaluated (see :func:`evaluate`).
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive number or a schedule, got {value!r}")
    if isinstance(value, (int, float)):
        value = Constant(float(value))
    if not callable(value):
        raise ValueError(f"{name} must be a positive number or a schedule, got {value!r}")
    if isinstance(value, Constant) and not value.value > 0:
        raise ValueError(f"{name} must be positive, got {value.value}")
    if isinstance(value, Cosine) and not (value.initial > 0 and value.target > 0):
        raise ValueError(
            f"{name} schedule must stay positive, got initial={value.initial}, "
            f"target={value.target}"
        )
    evaluate(value, 0, name)
    return value


def evaluate(schedule: Schedule, step: int, name: str) -> float:
    """Value of ``schedule`` at ``step``; raise if a custom schedule left the positive range."""
    value = float(schedule(step))
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, schedule gave {value} at step {step}")
    return value
