"""PolyStep: forward-only, gradient-free optimisation of any black-box cost.

Self-contained: nothing here imports the rest of the project, so it can optimise any
function of a parameter vector.
"""

from .base import AskTellOptimizer, StateMismatchError
from .polystep import NonFiniteCostError, PolyStep
from .polytopes import num_vertices, polytope_vertices, random_rotations
from .registry import REGISTRY, optimizer_class
from .schedules import Constant, Cosine, as_schedule
from .solvers import normalise_costs, sinkhorn_weights, softmax_weights, solve_weights
from .subspace import Subspace, SubspaceMap

__all__ = [
    "REGISTRY",
    "AskTellOptimizer",
    "Constant",
    "Cosine",
    "NonFiniteCostError",
    "PolyStep",
    "StateMismatchError",
    "Subspace",
    "SubspaceMap",
    "as_schedule",
    "normalise_costs",
    "num_vertices",
    "optimizer_class",
    "polytope_vertices",
    "random_rotations",
    "sinkhorn_weights",
    "softmax_weights",
    "solve_weights",
]
