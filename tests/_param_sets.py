"""Parameter sets for simulator tests: V copies of a network's writable values, some varied
and some repeating an earlier set (so a simulator's grouping of equal sets is exercised)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from polystep_neuro.core.network import NetworkSpec


def varied_sets(
    spec: NetworkSpec,
    names: Sequence[str],
    rng: np.random.Generator,
    sets: int = 6,
    vth_floor: float = 0.0,
) -> dict[str, torch.Tensor]:
    """``sets`` values of each of ``names``: set 0 the loaded ones, every third a repeat of
    the one before, the others plus N(0, 0.3) noise drawn from ``rng``; decays kept in
    [0, 1], thresholds made positive (plus ``vth_floor``)."""
    params = {}
    for name in names:
        base = torch.as_tensor(spec.parameters()[name])
        values = base[None].repeat(sets, *([1] * base.dim()))
        for v in range(1, sets):
            if v % 3 == 2:
                values[v] = values[v - 1]
            else:
                values[v] += torch.as_tensor(rng.normal(0, 0.3, size=base.shape)).float()
        if name.endswith((".du", ".dv")):
            values = values.clamp(0, 1)
        if name.endswith(".vth"):
            values = values.abs() + vth_floor if vth_floor else values.abs()
        params[name] = values
    return params
