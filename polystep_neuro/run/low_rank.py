"""Low-rank probes on a simulator: every candidate's first-layer weights as the current
point's plus a term of rank ``block_dim``.

With ``Settings.low_rank_probes`` PolyStep draws its directions on the first layer's weights
as outer products (``Subspace.outer``), so a probe moves them by ``u @ vt``.  The first
layer's input is the same for every candidate, so a simulator that takes the factors
(``evaluate_low_rank``: the float32 torch simulator) computes the current weights' product
once and per candidate only the rank-``block_dim`` part, instead of one full product per
candidate.  Every other backend gets the candidates' weights as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polystep_neuro.run.optimizers import LOW_RANK_NAME, first_layer_matrix
from polystep_neuro.run.params import ParamVector


@dataclass(frozen=True)
class LowRankProbes:
    """How one run hands its candidates to a backend as first-layer factors."""

    optimizer: Any  # has probe_factors(offset) -> (base, u, vt) for its open ask
    layout: ParamVector
    backend: Any  # has evaluate_low_rank(params, base, u, vt, inputs)
    offset: int  # the first layer's weights in the optimiser's vector
    scale: float  # their probe unit (device value of one unit)

    @classmethod
    def plan(cls, optimizer: Any, layout: ParamVector, backend: Any) -> LowRankProbes | None:
        """The plan where the optimiser draws the first layer's directions as outer
        products and the backend takes factors; None otherwise (weights as always)."""
        matrix = first_layer_matrix(layout)
        if not matrix or not getattr(backend, "low_rank_probes", False):
            return None
        outer = getattr(getattr(optimizer, "subspace", None), "outer", ())
        if matrix[0] not in outer or not hasattr(optimizer, "probe_factors"):
            return None
        scale = layout.scales[layout.names.index(LOW_RANK_NAME)]
        return cls(optimizer, layout, backend, matrix[0][0], float(scale))

    def counts(self, candidates: torch.Tensor, inputs: torch.Tensor) -> Any:
        """The backend's counts for the open ask's ``candidates`` (N, dim)."""
        params = self.layout.unflatten(candidates, skip=(LOW_RANK_NAME,))
        base, u, vt = self.optimizer.probe_factors(self.offset)
        return self.backend.evaluate_low_rank(params, base * self.scale, u * self.scale, vt,
                                              inputs)  # fmt: skip


def describe(adapter: Any, backend: str) -> str:
    """One line on what ``low_rank_probes`` does in this run (the user asked for it)."""
    if adapter.low_rank_probes:
        return "low-rank probes: the simulator shares the first layer's product among all sets"
    if LOW_RANK_NAME not in adapter.layout.names:
        return f"low-rank probes: {LOW_RANK_NAME} is not adapted, so they change nothing"
    return (
        f"low-rank probes: {backend} takes full weight sets (only the float32 torch simulator, "
        "torch-sim, takes factors), so the directions are outer products without the speed-up"
    )
