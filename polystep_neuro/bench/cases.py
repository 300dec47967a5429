"""What the simulator benchmarks share: a network case and its V perturbed parameter sets.

The roofline bench and the CPU-vs-device parity check both run a random network on V
parameter sets drawn around its own parameters; one definition keeps their cases and
their draws alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Case:
    """One network shape, its input batch and the parameters its V sets vary."""

    label: str
    sizes: tuple[int, ...]
    steps: int
    batch: int
    sets: int
    writable: tuple[str, ...]

    @property
    def shape(self) -> str:
        return "-".join(map(str, self.sizes))

    @property
    def where(self) -> str:
        return f"{self.shape}, T={self.steps}, B={self.batch}, V={self.sets}"


def perturbed_sets(
    base: Mapping[str, np.ndarray],
    names: Sequence[str],
    sets: int,
    scale: float,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """``sets`` copies of each named parameter plus ``scale`` x Gaussian noise, drawn from
    ``gen`` in the order of ``names``; decays kept in [0, 1] and thresholds positive."""
    params = {}
    for name in names:
        value = torch.as_tensor(base[name])
        noisy = value[None] + scale * torch.randn(sets, *value.shape, generator=gen)
        if name.endswith((".du", ".dv")):
            noisy = noisy.clamp(0.0, 1.0)
        if name.endswith(".vth"):
            noisy = noisy.abs()
        params[name] = noisy
    return params
