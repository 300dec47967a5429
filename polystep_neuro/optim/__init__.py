"""PolyStep: forward-only, gradient-free optimisation of any black-box cost.

Self-contained: nothing here imports the rest of the project, so it can optimise any
function of a parameter vector.
"""

from .base import AskTellOptimizer, NonFiniteCostError, StateMismatchError
from .baselines import CMAES, SPSA, OpenAIES, RandomSearch, SepCMAES
from .polystep import PolyStep
from .polytopes import num_vertices, polytope_vertices, random_rotations
from .registry import REGISTRY, optimizer_class
from .schedules import Constant, Cosine, as_schedule
from .solvers import normalise_costs, sinkhorn_weights, softmax_weights, solve_weights
from .subspace import Subspace, SubspaceMap

__all__ = [
    "CMAES",
    "REGISTRY",
    "SPSA",
    "AskTellOptimizer",
    "Constant",
    "Cosine",
    "NonFiniteCostError",
    "OpenAIES",
    "PolyStep",
    "RandomSearch",
    "SepCMAES",
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
