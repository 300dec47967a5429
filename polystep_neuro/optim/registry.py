"""The optimisers the adaptation loop can run, found by name (nevergrad's registry is the
model): each class builds itself from a search vector in units (``for_units``) and says
how many candidates it asks per step (``candidates_for``)."""

from __future__ import annotations

from .base import AskTellOptimizer
from .baselines import SPSA, OpenAIES, SepCMAES
from .polystep import PolyStep

REGISTRY: dict[str, type[AskTellOptimizer]] = {
    cls.name: cls for cls in (PolyStep, SepCMAES, OpenAIES, SPSA)
}


def optimizer_class(name: str) -> type[AskTellOptimizer]:
    """The optimiser registered as ``name`` (KeyError naming the choices otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}") from None
