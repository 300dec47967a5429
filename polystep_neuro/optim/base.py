"""What every optimiser here shares: the ask/tell bookkeeping and the exact checkpoint.

As torch.optim's ``Optimizer`` keeps the state and ``state_dict`` while the update rule is
each algorithm's own, :class:`AskTellOptimizer` keeps the pending batch, the step count,
the check of the told costs, the generator and ``state_dict`` / ``load_state_dict``; a
subclass writes only how it proposes candidates (``_propose``) and how it moves
(``_update``), and names the attributes its checkpoint holds (``_state``).

Subclasses built for a search vector measured in *units* (a change of one unit per
coordinate is a sensible probe) also say how to build them from those units
(``for_units``) and how many candidates they ask per step (``candidates_for``);
:mod:`polystep_neuro.optim.registry` finds those by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

CostsLike = torch.Tensor | np.ndarray | Sequence[float]


class StateMismatchError(ValueError):
    """A saved state from an optimiser built with other settings; ``keys`` names them, so a
    caller can say which setting to pass without reading the message."""

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


class NonFiniteCostError(ValueError):
    """Every cost of a batch was NaN or infinite, so no direction can be preferred."""


def refuse_all_non_finite(finite: torch.Tensor) -> None:
    """Raise :class:`NonFiniteCostError` when no cost of a batch (``finite``: its mask) is
    finite: every optimiser's one rule, whatever it does with the finite ones."""
    if not bool(finite.any()):
        raise NonFiniteCostError(
            f"all {finite.numel()} costs were non-finite (NaN or inf); cannot take a step"
        )


class AskTellOptimizer:
    """Base of the ask/tell optimisers (see the module docstring).

    ``ask() -> (N, n)`` candidates on ``x``'s device and dtype; ``tell(costs)`` with ``N``
    costs in the same order; ``x`` the current point; ``steps`` the completed tells;
    ``num_candidates`` N; ``state_dict`` / ``load_state_dict`` resume bit-identically.
    """

    #: The name the registry knows it by ("" for optimisers that are not registered).
    name: ClassVar[str] = ""
    #: Settings ``for_units`` takes, by name (the recipe passes exactly these).
    options: ClassVar[tuple[str, ...]] = ()
    #: state_dict key -> attribute, for everything a checkpoint must restore besides the
    #: generator (tensors are copied; the pending batch is ``_pending``).
    _state: ClassVar[Mapping[str, str]] = {}

    num_candidates: int  # N, a property or an attribute of the subclass

    def __init__(self, x0: torch.Tensor | np.ndarray, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        like = as_vector(x0)
        self.dtype, self.device, self.num_params = like.dtype, like.device, like.numel()
        self.seed = int(seed)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(self.seed)
        self._pending: Any = None
        self.steps = 0

    # ------------------------------------------------------------------ the protocol
    @property
    def x(self) -> torch.Tensor:
        """The current point (a copy)."""
        raise NotImplementedError

    def ask(self) -> torch.Tensor:
        """Candidates ``(N, n)`` to evaluate; asking again before ``tell`` draws a new batch."""
        candidates, self._pending = self._propose()
        return candidates

    def tell(self, costs: CostsLike) -> None:
        """Move from the costs of the last ``ask`` batch (same order, shape ``(N,)``)."""
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask(); call ask() first")
        checked = self._finite(self._shaped(costs))
        self._update(checked, self._pending)
        self._pending = None
        self.steps += 1

    def step(self, closure: Callable[[torch.Tensor], CostsLike]) -> torch.Tensor:
        """ask, evaluate ``closure(X)``, tell; returns the batch's costs as a tensor ``(N,)``."""
        costs = closure(self.ask())
        self.tell(costs)
        if torch.is_tensor(costs):
            return costs
        return torch.as_tensor(np.asarray(costs, dtype=np.float64))

    # ------------------------------------------------------------------ what subclasses write
    def _propose(self) -> tuple[torch.Tensor, Any]:
        """(candidates, what ``_update`` needs of them) for one ask."""
        raise NotImplementedError

    def _update(self, costs: torch.Tensor, pending: Any) -> None:
        """Move from the checked costs of the batch ``pending`` describes (``steps`` is
        still the index of this step)."""
        raise NotImplementedError

    def _finite(self, costs: torch.Tensor) -> torch.Tensor:
        """Non-finite costs lose every comparison (PolyStep has its own rule); a batch with
        no finite cost is refused, as PolyStep refuses it (the baselines moved on one)."""
        refuse_all_non_finite(torch.isfinite(costs))
        return torch.nan_to_num(costs, nan=math.inf, posinf=math.inf, neginf=math.inf)

    # ------------------------------------------------------------------ units recipe
    @classmethod
    def for_units(
        cls, x0: torch.Tensor, *, sizes: Sequence[int], total_steps: int, seed: int, **options: Any
    ) -> AskTellOptimizer:
        """The optimiser for ``x0`` in units (a change of one unit per coordinate is a sensible
        probe), its tensors of ``sizes`` laid end to end, for a ``total_steps``-step run."""
        raise NotImplementedError(f"{cls.__name__} has no recipe in units")

    @classmethod
    def candidates_for(cls, sizes: Sequence[int], **options: Any) -> int:
        """Candidates per step ``for_units`` would ask for, without building it."""
        raise NotImplementedError(f"{cls.__name__} has no recipe in units")

    @classmethod
    def unit_gains(cls, sizes: Sequence[int], **options: Any) -> list[float]:
        """Per tensor, by how much a unit of this optimiser's probe must be scaled so it
        moves each parameter by one unit (1 where a probe moves the coordinates directly)."""
        return [1.0] * len(sizes)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors are copies)."""
        state = self._header()
        for key, attr in self._state.items():
            value = getattr(self, attr)
            state[key] = value.clone() if torch.is_tensor(value) else value
        state["generator"] = self._gen.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into an optimiser built with the same settings."""
        self._check_header(state)
        for key, attr in self._state.items():
            value, mine = state[key], getattr(self, attr)
            if torch.is_tensor(value):
                if torch.is_tensor(mine) and value.shape != mine.shape:
                    raise ValueError(
                        f"state_dict {key} has shape {tuple(value.shape)}, this optimiser "
                        f"{tuple(mine.shape)}"
                    )
                dtype = self.dtype if value.is_floating_point() else None
                value = value.to(device=self.device, dtype=dtype).clone()
            setattr(self, attr, value)
        self._gen.set_state(state["generator"].clone())

    def _header(self) -> dict[str, Any]:
        return {"kind": type(self).__name__}

    def _check_header(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != type(self).__name__:
            kind = state.get("kind") or ("PolyStep" if "subspace" in state else "another kind")
            raise ValueError(f"state_dict is of a {kind}, not a {type(self).__name__}")

    # ------------------------------------------------------------------ helpers
    def _shaped(self, costs: CostsLike) -> torch.Tensor:
        """Costs as a ``(N,)`` tensor in ``x``'s dtype and device (a column is accepted)."""
        if not torch.is_tensor(costs):
            costs = torch.as_tensor(np.asarray(costs, dtype=np.float64))
        costs = costs.detach().to(device=self.device, dtype=self.dtype)
        if costs.ndim == 2 and costs.shape[1] == 1:
            costs = costs[:, 0]
        expected = (self.num_candidates,)
        if tuple(costs.shape) != expected:
            raise ValueError(
                f"costs must have shape {expected} (one per candidate of the last ask), "
                f"got {tuple(costs.shape)}"
            )
        return costs

    def _normal(self, rows: int) -> torch.Tensor:
        """``(rows, n)`` standard normal draws from the optimiser's own generator."""
        shape = (rows, self.num_params)
        return torch.randn(shape, generator=self._gen, dtype=self.dtype, device=self.device)


def as_vector(x0: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A detached float copy of a non-empty 1-D vector (ValueError otherwise)."""
    x = x0 if torch.is_tensor(x0) else torch.as_tensor(np.asarray(x0))
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 1-D vector, got shape {tuple(x.shape)}")
    return x.detach().clone()


Schedule = float | Callable[[int], float]


def value_at(schedule: Schedule, step: int) -> float:
    """A number, or a schedule's value at ``step``."""
    return float(schedule(step)) if callable(schedule) else float(schedule)
