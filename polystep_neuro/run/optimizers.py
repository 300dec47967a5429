"""The optimisers the adaptation loop drives, by name, with defaults set from the network.

Every optimiser here speaks one ask/tell protocol (:class:`AskTell`): ``ask()`` returns the
candidate parameter vectors, ``tell(costs)`` takes one cost per candidate, ``x`` is the
current point, and ``state_dict`` / ``load_state_dict`` checkpoint it exactly.  So PolyStep
and the baselines run through the same :class:`~polystep_neuro.run.controller.Adapter`, CLI and
benchmark, and a user can compare them on their own device.

Units.  The recipe measures every writable tensor in *probe units*: one unit is the change
per parameter that a probe makes, set from the tensor's typical magnitude (``probe`` times
it) and, on a fixed-point device, never below ``min_probe_steps`` of its resolution (a smaller
probe rounds back to the same device integers and measures nothing).  A step is then a
fraction of a probe for every tensor alike.  For PolyStep the unit also folds in its
subspace: a probe moves one block of z, which moves each parameter of a tensor searched at
rank r by ``1/sqrt(r)`` per unit of z, and each of the ``block_dim`` coordinates of a tensor
kept in full by ``1/sqrt(block_dim)``; the scales undo that, so a probe (one unit of z from
the current point) moves every parameter by one probe unit whatever the tensor's size.

PolyStep's defaults (measured on the demo's adaptation, the digits benchmark and the
tuned half of the task zoo, see docs/benchmarks.md): a fresh random subspace every step,
as many search coordinates as ``rank`` per tensor gives, in one subspace over every writable
tensor together (``rank_rule="joint"``: each direction moves every tensor, as an evolution
strategy's do, so each parameter set informs every tensor; searched per tensor, a set informs
one, and the zoo's every-weight tasks lost to OpenAI-ES, docs/benchmarks.md section 14;
sharing per-tensor coordinates by tensor size measured no better), softmax temperature 1 on
the normalised costs, probes of half each tensor's typical magnitude, and a step of 15 % of a
probe per step along a consistent direction that lengthens while successive moves agree and
shortens when they turn back (``step_adapt``; a turn back counts more, so on minibatch noise
alone the step shrinks and the run settles).  How a step's direction becomes a move
(``update="auto"``): where a weight matrix moves, Adam's per-parameter normalisation (its
first moment decaying at ``momentum`` 0.9), each parameter ``step`` probe units a step along
a steady direction, as OpenAI-ES moves; where only neuron parameters move (the hidden biases
and thresholds of the drifted-only and label-free recipes), heavy-ball momentum 0.9 on the
parameters, which averages the directions of successive subspaces and the minibatch noise.
How a step's costs are normalised before the softmax (``shaping="auto"``): with Adam, their
centred ranks over the whole batch (OpenAI-ES's fitness shaping), so only their order counts
and a few sets far worse than the rest do not set the scale the others move by; with
heavy-ball the costs shifted by their minimum, as before.  On the task zoo ranks lowered
the loss where weights move (geometric mean 0.98 of the shifted costs' on both seed halves;
the Synaptic every-weight task, the zoo's worst, 0.92) and did not help on the hidden biases
(two of four seed halves worse); on the README's one-hidden-layer recipes they cost a little
accuracy (docs/benchmarks.md sections 4 and 14).
On the task zoo Adam kept clean accuracy where every weight of a deeper network moved and
heavy-ball did not (docs/benchmarks.md section 14), and heavy-ball recovered more on a few
dozen biases (section 4).  No fixed decay on top (``final_step=1``): a half-cosine decay to
a tenth by the last step measured worse with heavy-ball once ``step_adapt`` was in, and no
better with Adam.  The point reported is the last one probed around (``average=0``): the
mean of the last fifth of the steps' points, with or without a longer step, won on some zoo
tasks and cost clean accuracy or loss on others (section 14), so it is opt-in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import REGISTRY, AskTellOptimizer, optimizer_class
from polystep_neuro.optim.moves import RULES
from polystep_neuro.optim.polytopes import POLYTOPES
from polystep_neuro.optim.solvers import SHAPINGS
from polystep_neuro.optim.subspace import RANK_RULES
from polystep_neuro.run.deprecation import unexpected_option
from polystep_neuro.run.params import ParamVector, typical_scale
from simulators.fixed_point import resolution

OPTIMIZERS = tuple(REGISTRY)
# PolyStep's update rules, and "auto": Adam where a weight matrix moves, heavy-ball where
# only neuron parameters (biases, thresholds) do (module docstring; resolved_update)
UPDATES = ("auto", *RULES)
# PolyStep's cost shapings, and "auto": centred ranks where the update is Adam, the shifted
# costs elsewhere (module docstring; resolved_shaping)
SHAPING_CHOICES = ("auto", *SHAPINGS)


@runtime_checkable
class AskTell(Protocol):
    """What the adaptation loop needs from an optimiser."""

    @property
    def num_candidates(self) -> int: ...

    @property
    def x(self) -> torch.Tensor: ...

    def ask(self) -> torch.Tensor: ...

    def tell(self, costs: Any) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# PolyStep's settings that also size every method's population (its candidate count).
POPULATION = ("rank", "rank_rule", "polytope", "block_dim")


@dataclass(frozen=True)
class Settings:
    """Optimiser settings; every default is meant to work without tuning.

    Sizes are in probe units (module docstring) except ``probe`` itself, which is a fraction
    of each tensor's typical magnitude (weights: their RMS; see ``params.typical_scale``).
    """

    optimizer: str = "polystep"
    probe: float = 0.5  # probe size per parameter, as a fraction of its typical magnitude
    min_probe_steps: float = 4.0  # and at least this many device resolution steps
    rank: int = 64  # PolyStep: search coordinates per tensor (shared out by rank_rule)
    step: float = 0.15  # PolyStep: initial step per probe unit, along a steady direction
    final_step: float = 1.0  # PolyStep: cosine decay of the step to this fraction (1: none)
    momentum: float = 0.9  # PolyStep: heavy-ball coefficient on the parameters
    step_adapt: float = 0.05  # PolyStep: how fast the step follows the evidence (0: off)
    epsilon: float = 1.0  # PolyStep: softmax temperature on the normalised costs
    absorb_interval: int = 1  # PolyStep: steps between subspace redraws
    shaping: str = "auto"  # PolyStep: how the costs are normalised (SHAPING_CHOICES, shape_costs)
    update: str = "auto"  # PolyStep: how a direction becomes a move (UPDATES, optim.moves)
    rank_rule: str = "joint"  # PolyStep: how search coordinates are shared among tensors
    average: float = 0.0  # PolyStep: report the mean of the points of this last fraction of steps
    polytope: str = "orthoplex"  # PolyStep: the probes around each block (optim.polytopes)
    block_dim: int = 2  # PolyStep: coordinates of z per block
    low_rank_probes: bool = False  # PolyStep: first-layer directions as outer products
    popsize: int | None = None  # baselines: candidates per step (default: PolyStep's count)
    lr: float = 0.1  # OpenAI-ES: Adam step per parameter, in probe units
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in REGISTRY:
            raise PolystepError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        for name in ("probe", "step", "epsilon", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise PolystepError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.final_step <= 1:
            raise PolystepError(f"final_step must be in (0, 1], got {self.final_step}")
        if not 0 <= self.momentum < 1:
            raise PolystepError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (isinstance(self.average, (int, float)) and 0 <= self.average <= 1):
            raise PolystepError(f"average must be in [0, 1], got {self.average!r}")
        if self.min_probe_steps < 0:
            raise PolystepError(f"min_probe_steps must be >= 0, got {self.min_probe_steps}")
        for name in ("rank", "absorb_interval", "block_dim"):
            if int(getattr(self, name)) < 1:
                raise PolystepError(f"{name} must be a positive integer")
        choices_of = {"shaping": SHAPING_CHOICES, "update": UPDATES, "rank_rule": RANK_RULES,
                      "polytope": POLYTOPES}  # fmt: skip
        for name, choices in choices_of.items():
            if getattr(self, name) not in choices:
                raise PolystepError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        if self.low_rank_probes and self.optimizer != "polystep":
            raise PolystepError(
                f"low-rank probes are PolyStep's directions; {self.optimizer} draws its own "
                "(drop --low-rank-probes / low_rank_probes=True, or use polystep)"
            )
        if self.popsize is not None and self.popsize < 2:
            raise PolystepError(f"popsize must be at least 2, got {self.popsize}")
        self._refuse_what_the_optimizer_ignores()

    def _refuse_what_the_optimizer_ignores(self) -> None:
        """A setting of another optimizer, changed from its default, would be ignored
        (``pn.adapt(..., lr=50, popsize=7)`` ran PolyStep unchanged, without a word)."""
        taken = set(optimizer_class(self.optimizer).options) | set(POPULATION)
        others = sorted({o for cls in REGISTRY.values() for o in cls.options} - taken)
        defaults = {f.name: f.default for f in fields(self)}
        ignored = [n for n in others if n in defaults and getattr(self, n) != defaults[n]]
        if ignored:
            owners = sorted({name for name, cls in REGISTRY.items()
                             if set(ignored) & set(cls.options)})  # fmt: skip
            one = len(ignored) == 1
            raise PolystepError(
                f"{', '.join(ignored)} {'is not a setting' if one else 'are not settings'} of "
                f"{self.optimizer}, which would ignore {'it' if one else 'them'} ("
                f"{' / '.join(owners)} {'takes' if len(owners) == 1 else 'take'} "
                f"{'it' if one else 'them'}): drop {'it' if one else 'them'} or choose the "
                "optimizer"
            )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def refuse_unknown(cls, call: str, options: Sequence[str]) -> None:
        """A misspelt option of ``call`` (``adapt``, ``deploy``) said before any work, with
        the closest name and the list (Python's own error named this class, late)."""
        known = cls.names()
        for name in options:
            if name not in known:
                takes = f"besides its named arguments it takes the settings {', '.join(known)}"
                raise unexpected_option(call, name, known, takes)

    def options_for(
        self, cls: type[AskTellOptimizer], sizes: Sequence[int], names: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The settings ``cls`` takes (its ``options``), by name; a population left unset is
        PolyStep's count, so every method evaluates as many parameter sets per step; an
        ``update`` and ``shaping`` of ``"auto"`` resolved for the tensors ``names``
        (:func:`resolved_update`, :func:`resolved_shaping`)."""
        options = {name: getattr(self, name) for name in cls.options}
        if "popsize" in options and options["popsize"] is None:
            options["popsize"] = polystep_candidates(sizes, self)
        if "update" in options:
            options["update"] = resolved_update(self, names)
        if "shaping" in options:
            options["shaping"] = resolved_shaping(self, names)
        return options


def probe_sizes(spec: NetworkSpec, names: Sequence[str], settings: Settings) -> list[float]:
    """Per tensor, the change per parameter of one probe (float units)."""
    return [
        max(settings.probe * typical_scale(spec, n), settings.min_probe_steps * resolution(spec, n))
        for n in names
    ]


def make_layout(
    spec: NetworkSpec, settings: Settings, names: Sequence[str] | None = None
) -> ParamVector:
    """The writable parameters of ``spec`` as one vector in probe units (see module doc),
    scaled by the gains the optimiser needs for one probe to move every parameter one unit."""
    names = tuple(spec.writable if names is None else names)
    if not names:
        ParamVector(spec, names)  # raises the "nothing to adapt" error
    shapes = spec.param_shapes()
    sizes = [math.prod(shapes[n]) for n in names]
    cls = optimizer_class(settings.optimizer)
    gains = cls.unit_gains(sizes, **settings.options_for(cls, sizes))
    probes = [p * g for p, g in zip(probe_sizes(spec, names, settings), gains, strict=True)]
    return ParamVector(spec, names, scales=probes)


def resolved_update(settings: Settings, names: Sequence[str]) -> str:
    """PolyStep's update rule for a run that adapts ``names``: the one named, or for
    ``"auto"`` Adam when a weight matrix is among them and heavy-ball when only neuron
    parameters are, or none is named (module docstring)."""
    if settings.update != "auto":
        return settings.update
    return "adam" if any(name.endswith(".weight") for name in names) else "heavy-ball"


def resolved_shaping(settings: Settings, names: Sequence[str]) -> str:
    """PolyStep's cost shaping for a run that adapts ``names``: the one named, or for
    ``"auto"`` centred ranks where the update resolves to Adam and the shifted costs where it
    is another rule (module docstring)."""
    if settings.shaping != "auto":
        return settings.shaping
    return "rank" if resolved_update(settings, names) == "adam" else "shift"


def make_optimizer(
    settings: Settings, layout: ParamVector, x0: torch.Tensor, total_steps: int
) -> AskTellOptimizer:
    """The optimiser named by ``settings`` over ``x0 = layout.flatten(spec)``."""
    cls = optimizer_class(settings.optimizer)
    options = settings.options_for(cls, layout.sizes, layout.names)
    if settings.low_rank_probes:
        options["outer"] = first_layer_matrix(layout)
    return cls.for_units(
        x0, sizes=layout.sizes, total_steps=total_steps, seed=settings.seed, **options
    )


LOW_RANK_NAME = "fc0.weight"  # the one weight matrix whose input every parameter set shares


def first_layer_matrix(layout: ParamVector) -> tuple[tuple[int, int, int], ...]:
    """``(offset, rows, cols)`` of the first layer's weights in ``layout``'s vector (empty
    when they are not writable): the matrix low-rank probes move by outer products."""
    if LOW_RANK_NAME not in layout.names:
        return ()
    rows, cols = layout.shapes[LOW_RANK_NAME]
    return ((int(layout.offsets[layout.names.index(LOW_RANK_NAME)]), int(rows), int(cols)),)


def polystep_candidates(sizes: ParamVector | Sequence[int], settings: Settings) -> int:
    """How many candidates PolyStep asks for per step with these settings (the baselines'
    default population, so every method evaluates as many parameter sets per step)."""
    if isinstance(sizes, ParamVector):
        sizes = sizes.sizes
    polystep = optimizer_class("polystep")
    return polystep.candidates_for(sizes, **{n: getattr(settings, n) for n in polystep.options})
