"""PolyStep: forward-only black-box optimisation with polytope probes and softmax-OT weights.

One step probes every block of the search vector along the rotated vertices of a small
polytope, evaluates all probes in one batch, turns the block x vertex cost matrix into
weights (softmax-OT or Sinkhorn), and moves every block to the weighted mean of its vertex
directions (docs/concepts.md explains the loop it serves).

Candidate order (what ``ask`` returns and ``tell`` expects) is block-major:
``index = (i * V + v) * K + (k - 1)`` for block ``i`` in ``[0, P)``, vertex ``v`` in ``[0, V)``
and probe ``k`` in ``[1, K]``; candidate ``index`` is the current point with block ``i``
replaced by ``z_i + probe_radius * k / (K + 1) * R_i u_v``.

Radii are absolute distances in z (the reference multiplies constant radii by epsilon; with
the reference's ``step_radius=a`` and ``epsilon=e`` use ``step_radius=a * e`` here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from . import moves
from .base import (
    AskTellOptimizer,
    CostsLike,
    NonFiniteCostError,
    StateMismatchError,
    as_vector,
    refuse_all_non_finite,
)
from .polytopes import POLYTOPES, num_vertices, polytope_vertices, random_rotations
from .schedules import Cosine, Schedule, as_schedule, evaluate
from .solvers import SHAPINGS, SOLVERS, shape_costs, solve_weights
from .subspace import Subspace, SubspaceMap, search_subspace

logger = logging.getLogger(__name__)

__all__ = ["CostsLike", "NonFiniteCostError", "PolyStep"]

_STATE_VERSION = 2
# Blocks of z the recipe in units uses (``for_units``): two coordinates, four vertices each.
BLOCK_DIM = 2
# The adaptation recipe's values (``for_units``' defaults; the run floor's Settings use
# the same), chosen on the tuned half of the task zoo (docs/benchmarks.md, section 14).
RECIPE: dict[str, Any] = {
    "rank": 64, "step": 0.15, "final_step": 1.0, "momentum": 0.9, "step_adapt": 0.05,
    "epsilon": 1.0, "absorb_interval": 1,
}  # fmt: skip
# step_adapt: a move that turns back counts this much more than one that continues, so when
# successive moves only show noise (agreement as often negative as positive) the step decays.
_TURN_BACK_WEIGHT = 1.5
# step_adapt with a normalised update (Adam, Adan): the agreement counts at most this many
# spreads either way.  Two moves along one steady direction agree by sqrt(n) spreads, so
# uncapped the step grew by exp(step_adapt * sqrt(n)) a step (1.4x in 50-D at 0.05, 2x at
# 0.1), and since every parameter moves by the whole step there, it overshot: a noisy 50-D
# quadratic diverged at step_adapt 0.1 (cost 380 -> 26,000) and ended 5-10x worse at 0.05.
# With heavy-ball (moves in proportion to the evidence) the cap measured mixed on the task
# zoo's hidden-bias tasks (docs/benchmarks.md, section 14), so it stays off there.
_AGREEMENT_CAP = 1.0


class PolyStep(AskTellOptimizer):
    """Forward-only optimiser over a 1-D parameter vector (ask/tell or ``step(closure)``).

    Args:
        x0: initial parameters, 1-D torch tensor (float32/float64, any device) or array.
        polytope: ``"orthoplex"`` (2p vertices), ``"simplex"`` (p+1) or ``"cube"`` (2**p).
        block_dim: dimension p of each block of z; the last block is padded.
        step_radius: distance each block moves towards its weighted vertex mean (rho_s).
        probe_radius: rho_p; probe k of K sits at ``rho_p * k / (K + 1)`` (so with the default
            single probe, at half the radius).
        epsilon: softmax / Sinkhorn temperature on the normalised costs.
        num_probe: probes per vertex K, at ``probe_radius * k / (K + 1)``.
        solver: ``"softmax"`` (per block) or ``"sinkhorn"`` (entropic OT over blocks).
        subspace: optional :class:`Subspace`; ``None`` searches the full parameter space.
        seed: seed of the optimiser's own ``torch.Generator`` (global RNG is never used).
        momentum: heavy-ball coefficient in ``[0, 1)`` on the moves of the parameters
            themselves (so it survives the subspace redraws: with a fresh subspace every step,
            momentum is what averages the directions found in successive subspaces and the
            minibatch noise away; the steady-state move is ``step_radius / (1 - momentum)``
            along a consistent direction).
        step_adapt: rate at which the step length follows the evidence of successive moves
            (0: off).  After each step the new move is compared with the previous one (the
            momentum when there is momentum): pointing the same way says the steps are too
            short, pointing back says they overshoot.  Their cosine, in units of its spread
            for unrelated directions (``1/sqrt(n)``), times ``step_adapt`` is added to the log
            of a multiplier on ``step_radius`` (kept within ``[1e-3, 1e3]``); with ``adam``
            or ``adan`` the cosine counts at most one spread either way (the step changes by
            at most a factor ``exp(step_adapt)`` a step).  Turning back counts 1.5 times as
            much, so a run whose moves only show noise lets its step decay.
        keep_best: track the best evaluated candidate in ``best_x`` / ``best_cost``.
        sinkhorn_tol, sinkhorn_max_iter: stopping rule of the Sinkhorn solver.
        shaping: how the block x vertex costs are normalised before the solver weighs them
            (:func:`~polystep_neuro.optim.solvers.shape_costs`: ``"shift"``, ``"rank"``,
            ``"tensor"``, whose groups are the tensors of the subspace).
        update: how the weighted direction becomes a move (:mod:`polystep_neuro.optim.moves`:
            ``"heavy-ball"`` with ``momentum``, ``"torque"``, ``"adam"`` with ``momentum`` as
            its first-moment decay, ``"adan"``); for ``adam`` and ``adan`` ``step_radius``
            is the move per parameter along a steady direction, times ``unit_scale``.
        unit_scale: for ``adam`` and ``adan``, the length of one unit of each parameter of
            ``x`` (a scalar or an ``(n,)`` tensor; default 1).  The recipe in units measures
            ``x`` in probe units times its subspace gains (:meth:`unit_gains`), so its
            normalised moves must be divided by them to be ``step_radius`` probe units.
        average: what ``x`` reports (and a run hands back) is a running average of the
            probed points over the last ``average`` fraction of the steps taken (0: the
            probed point itself).  The probes stay around the probed point; the average only
            smooths the minibatch noise out of the estimate, at no cost in evaluations.

    ``step_radius``, ``probe_radius`` and ``epsilon`` accept a float (constant) or a schedule
    (callable of the step index, e.g. :class:`Cosine`).
    """

    name = "polystep"
    RECIPE: ClassVar[dict[str, Any]] = RECIPE
    options = (
        "rank", "step", "final_step", "momentum", "step_adapt", "epsilon", "absorb_interval",
        "shaping", "update", "rank_rule", "polytope", "block_dim", "average",
    )  # fmt: skip
    _state = {
        "step": "steps", "z": "_z", "x": "_x", "velocity": "_velocity", "pending": "_pending",
        "best_x": "best_x", "best_cost": "best_cost", "step_scale": "step_scale",
        "last_move": "_last_move", "second": "_second", "diff": "_diff", "last_dir": "_last_dir",
        "average": "_average",
    }  # fmt: skip

    def __init__(
        self,
        x0: torch.Tensor | np.ndarray,
        polytope: str = "orthoplex",
        block_dim: int = 2,
        step_radius: float | Schedule = 0.1,
        probe_radius: float | Schedule = 0.2,
        epsilon: float | Schedule = 0.1,
        num_probe: int = 1,
        solver: str = "softmax",
        subspace: Subspace | None = None,
        seed: int = 0,
        momentum: float = 0.0,
        step_adapt: float = 0.0,
        keep_best: bool = False,
        sinkhorn_tol: float = 1e-6,
        sinkhorn_max_iter: int = 100,
        shaping: str = "shift",
        update: str = "heavy-ball",
        unit_scale: float | torch.Tensor = 1.0,
        average: float = 0.0,
    ) -> None:
        """Long only because it checks every argument before building the search state."""
        x0 = as_vector(x0)
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 contains non-finite values")
        if polytope not in POLYTOPES:
            raise ValueError(f"polytope must be one of {POLYTOPES}, got {polytope!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {SHAPINGS}, got {shaping!r}")
        if update not in moves.RULES:
            raise ValueError(f"update must be one of {moves.RULES}, got {update!r}")
        _check_positive_int(block_dim, "block_dim")
        _check_positive_int(num_probe, "num_probe")
        if not (isinstance(step_adapt, (int, float)) and 0.0 <= step_adapt <= 1.0):
            raise ValueError(f"step_adapt must be in [0, 1], got {step_adapt!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (isinstance(average, (int, float)) and 0.0 <= average <= 1.0):
            raise ValueError(f"average must be in [0, 1], got {average!r}")
        if not sinkhorn_tol > 0:
            raise ValueError(f"sinkhorn_tol must be positive, got {sinkhorn_tol}")
        _check_positive_int(sinkhorn_max_iter, "sinkhorn_max_iter")
        if subspace is not None and not isinstance(subspace, Subspace):
            raise ValueError(f"subspace must be a Subspace or None, got {type(subspace).__name__}")
        super().__init__(x0, seed)

        self.polytope = polytope
        self.block_dim = int(block_dim)
        self.num_probe = int(num_probe)
        self.solver = solver
        self.shaping = shaping
        self.update = update
        self.momentum = float(momentum)
        self.step_adapt = float(step_adapt)
        self.average = float(average)
        self.keep_best = bool(keep_best)
        self.sinkhorn_tol = float(sinkhorn_tol)
        self.sinkhorn_max_iter = int(sinkhorn_max_iter)
        self.step_radius = as_schedule(step_radius, "step_radius")
        self.probe_radius = as_schedule(probe_radius, "probe_radius")
        self.epsilon = as_schedule(epsilon, "epsilon")

        spec = subspace or Subspace(sizes=[x0.numel()], rank=x0.numel(), absorb_interval=None)
        self.subspace = spec if subspace is not None else None
        self._map = SubspaceMap(spec, x0, self.block_dim, self.seed)
        self._absorb_interval = spec.absorb_interval

        self.num_vertices = num_vertices(polytope, self.block_dim)
        self.num_blocks = self._map.num_blocks
        self._block_group = self._map.block_tensors()
        self._template = polytope_vertices(
            polytope, self.block_dim, dtype=self.dtype, device=self.device
        )
        k = torch.arange(1, self.num_probe + 1, dtype=self.dtype, device=self.device)
        self._probe_scales = k / (self.num_probe + 1)

        self._z = self._map.initial_z()
        self._x = self._map.lift(self._z)
        self._velocity = torch.zeros_like(self._x)  # in parameter space
        # what x reports when averaging (the mean of the probed points); None otherwise
        self._average = self._x.clone() if self.average > 0 else None
        self._last_move = torch.zeros_like(self._x)  # for step_adapt without momentum
        # adam / adan: the second moment; adan: the moment of the change and the last direction
        self._second: torch.Tensor | None = None
        self._diff: torch.Tensor | None = None
        self._last_dir: torch.Tensor | None = None
        if update in moves.NORMALISED:
            self._second = torch.zeros_like(self._x)
        if update == "adan":
            self._diff = torch.zeros_like(self._x)
        self.step_scale = 1.0  # step_adapt's multiplier on step_radius
        self._unit_scale = torch.as_tensor(unit_scale, dtype=self.dtype, device=self.device)
        if (
            self._unit_scale.ndim not in (0, 1)
            or (self._unit_scale.ndim == 1 and self._unit_scale.numel() != x0.numel())
            or not bool((self._unit_scale > 0).all())
        ):
            raise ValueError("unit_scale must be a positive number or one per parameter")
        # self._pending: the directions (P, V, p) of the open ask
        self._pending_x: torch.Tensor | None = None  # candidates, kept only for keep_best
        self.best_x: torch.Tensor | None = None
        self.best_cost: float = float("inf")
        self.last_weights: torch.Tensor | None = None

    # ------------------------------------------------------------------ the recipe in units
    @classmethod
    def for_units(
        cls,
        x0: torch.Tensor | np.ndarray,
        *,
        sizes: Sequence[int] | None = None,
        total_steps: int,
        seed: int = 0,
        rank: int = RECIPE["rank"],
        step: float = RECIPE["step"],
        final_step: float = RECIPE["final_step"],
        momentum: float = RECIPE["momentum"],
        step_adapt: float = RECIPE["step_adapt"],
        epsilon: float = RECIPE["epsilon"],
        absorb_interval: int = RECIPE["absorb_interval"],
        shaping: str = "shift",
        update: str = "adam",
        rank_rule: str = "joint",
        polytope: str = "orthoplex",
        block_dim: int = BLOCK_DIM,
        average: float = 0.0,
        outer: Sequence[tuple[int, int, int]] = (),
        unit: float | None = None,
        keep_best: bool = False,
        **options: Any,
    ) -> PolyStep:
        """PolyStep on ``x0`` scaled by :meth:`unit_gains`: one probe per vertex one unit
        from the current point; every tensor of ``sizes`` (default: ``x0`` as one tensor)
        through its own rank-``rank`` subspace, redrawn every ``absorb_interval`` steps;
        heavy-ball ``momentum``, so the step, ``step`` units along a steady direction, is
        ``step * (1 - momentum)`` per move, following the evidence at ``step_adapt`` and
        decaying on a half cosine to ``final_step`` of itself by ``total_steps``.  With
        ``update="adam"`` or ``"adan"`` the step is per parameter already (normalised), so
        it is ``step`` probe units per move: the normalised move is divided by the gains
        that scale ``x``.  The defaults are the adaptation recipe's (``RECIPE``).
        ``total_steps`` only shapes that decay (none by default): nothing stops the
        optimiser there, and past it every schedule keeps its last value.

        ``x0`` is measured in probe units times the gains (what the adaptation recipe's
        parameter layout does), unless ``unit`` is given: then ``x0`` is in your own
        coordinates and ``unit`` is one probe per parameter there (a sensible probe
        distance on a black box of your own), which needs one gain for every tensor (one
        tensor, or ``rank_rule="joint"``)."""
        if options:  # silently dropping e.g. keep_best= would cost a user their best point
            raise TypeError(f"PolyStep.for_units got unknown option(s) {sorted(options)}")
        x0 = as_vector(x0)
        sizes = [x0.numel()] if sizes is None else sizes
        if unit is not None and not (
            isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0
        ):
            raise ValueError(f"unit must be a positive number, got {unit!r}")
        total = max(int(total_steps), 1)
        normalised = update in moves.NORMALISED
        subspace = search_subspace(sizes, rank, rank_rule, block_dim, absorb_interval)
        if outer:  # the matrices whose directions are outer products (Subspace.outer)
            subspace = replace(subspace, outer=tuple(outer))
        gains = _gains_of(subspace, len(sizes), block_dim)
        length = 1.0  # in z, of one probe unit (x already holds the gains: 1)
        if unit is not None:
            if len(set(gains)) > 1:
                raise ValueError(
                    f"unit= needs one search gain for every tensor, and rank_rule "
                    f"{rank_rule!r} gives {len(set(gains))}: use rank_rule='joint' (the "
                    "default), or measure each tensor in its own units and leave unit out"
                )
            length = unit * gains[0]
        move = length * (step if normalised else step * (1 - momentum))
        unit_scale: float | torch.Tensor = 1.0
        if normalised:  # x is in probe units times the gains: a unit move is 1 / gain there
            counts = torch.as_tensor([int(n) for n in sizes], device=x0.device)
            per_tensor = 1.0 / torch.as_tensor(gains, dtype=x0.dtype, device=x0.device)
            unit_scale = per_tensor.repeat_interleave(counts)
        return cls(
            x0,
            polytope=polytope,
            block_dim=block_dim,
            step_radius=Cosine(move, move * final_step, total),
            probe_radius=length * cls.unit_probe_radius(),
            epsilon=epsilon,
            momentum=momentum,
            step_adapt=step_adapt,
            subspace=subspace,
            seed=seed,
            shaping=shaping,
            update=update,
            unit_scale=unit_scale,
            average=average,
            keep_best=keep_best,
        )

    @classmethod
    def candidates_for(
        cls,
        sizes: Sequence[int],
        *,
        rank: int,
        rank_rule: str = "joint",
        polytope: str = "orthoplex",
        block_dim: int = BLOCK_DIM,
        **options: Any,
    ) -> int:
        """P blocks x V vertices x K probes of ``for_units``' PolyStep."""
        dim = search_subspace(sizes, rank, rank_rule, block_dim).dim
        return math.ceil(dim / block_dim) * num_vertices(polytope, block_dim)

    @classmethod
    def unit_gains(
        cls,
        sizes: Sequence[int],
        *,
        rank: int,
        rank_rule: str = "joint",
        block_dim: int = BLOCK_DIM,
        **options: Any,
    ) -> list[float]:
        """A unit move of one block of z moves each parameter of a tensor searched at rank
        r by ``1 / sqrt(r)`` (RMS) and each of the ``block_dim`` coordinates of a tensor kept
        in full by ``1 / sqrt(block_dim)``; these gains undo that, so a probe one unit from
        the current point moves every parameter by one unit whatever its tensor's size."""
        return _gains_of(search_subspace(sizes, rank, rank_rule, block_dim), len(sizes), block_dim)

    @staticmethod
    def unit_probe_radius(num_probe: int = 1) -> float:
        """The probe radius that puts the outermost of ``num_probe`` probes one unit out."""
        return (num_probe + 1) / num_probe

    # ------------------------------------------------------------------ properties
    @property
    def num_candidates(self) -> int:
        """N = P * V * K evaluations per step."""
        return self.num_blocks * self.num_vertices * self.num_probe

    @property
    def dim(self) -> int:
        """Dimension D of the search space z."""
        return self._map.dim

    @property
    def x(self) -> torch.Tensor:
        """Current parameters ``(n,)`` in the full space (a copy): the mean of the last
        points when averaging."""
        return (self._x if self._average is None else self._average).clone()

    @property
    def z(self) -> torch.Tensor:
        """Current search coordinates ``(D,)`` (a copy)."""
        return self._z.clone()

    # ------------------------------------------------------------------ ask / tell
    def _propose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-major candidates: row ``(i * V + v) * K + (k - 1)`` is the current point
        with block ``i`` moved by ``probe_radius * k / (K + 1)`` along its rotated vertex
        ``v``; and the directions (P, V, p) the update weighs."""
        rotations = random_rotations(
            self.num_blocks,
            self.block_dim,
            generator=self._gen,
            dtype=self.dtype,
            device=self.device,
        )
        # d[i, v] = R_i u_v
        directions = torch.einsum("ipq,vq->ivp", rotations, self._template)
        candidates = self._candidates(directions)
        self._pending_x = candidates if self.keep_best else None
        return candidates, directions

    def _candidates(self, directions: torch.Tensor) -> torch.Tensor:
        return self._map.lift_block_deltas(self._x, self._deltas(directions))

    def _deltas(self, directions: torch.Tensor) -> torch.Tensor:
        """(P, V * K, p): probe k of vertex v at radius * s_k along d[i, v]."""
        radius = evaluate(self.probe_radius, self.steps, "probe_radius")
        deltas = radius * self._probe_scales.view(1, 1, -1, 1) * directions.unsqueeze(2)
        return deltas.reshape(self.num_blocks, -1, self.block_dim)

    def probe_factors(self, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The open ask's candidates on the ``outer`` matrix at ``offset`` (see
        :class:`Subspace`) as ``(base, u, vt)``: candidate c's matrix is ``base`` (the
        current point's, rows x cols) plus ``u[c] @ vt[c]`` (rank ``block_dim``), so a
        simulator can share the base's product among all of them."""
        if self._pending is None:
            raise RuntimeError("probe_factors describes the candidates of an open ask")
        u, vt = self._map.probe_factors(offset, self._deltas(self._pending))
        base = self._x[offset : offset + u.shape[1] * vt.shape[2]].view(u.shape[1], -1)
        return base, u, vt

    def _update(self, costs: torch.Tensor, directions: torch.Tensor) -> None:
        """Softmax-OT weights of every block's vertices, the move to their weighted mean."""
        if self.keep_best:
            self._update_best(costs, directions)
        cost_matrix = costs.view(self.num_blocks, self.num_vertices, self.num_probe).mean(-1)
        eps = evaluate(self.epsilon, self.steps, "epsilon")
        weights = solve_weights(
            shape_costs(cost_matrix, self.shaping, self._block_group),
            eps,
            self.solver,
            tol=self.sinkhorn_tol,
            max_iter=self.sinkhorn_max_iter,
            normalised=True,
        )
        radius = evaluate(self.step_radius, self.steps, "step_radius") * self.step_scale
        update = radius * torch.einsum("iv,ivp->ip", weights, directions).reshape(-1)
        if self.update in ("heavy-ball", "torque"):
            self._move_with_momentum(update[: self.dim])
        else:
            self._move_normalised(update[: self.dim], radius)
        self.last_weights = weights
        self._pending_x = None
        done = self.steps + 1
        if self._absorb_interval is not None and done % self._absorb_interval == 0:
            self._absorb()
        if self._average is not None:  # a running mean over the last `average` of the steps
            window = max(1.0, self.average * done)  # grows with them
            self._average = self._average + (self._x - self._average) / window

    def _move_with_momentum(self, update: torch.Tensor) -> None:
        """Heavy-ball (or torque-aware) momentum on the parameters, ``update`` the move in z."""
        z = self._z + update
        if self.momentum > 0 or self.step_adapt > 0:
            move = self._map.lift_delta(update)
            if self.step_adapt > 0:
                self._follow_evidence(move)
        if self.momentum > 0:
            rule = moves.heavy_ball if self.update == "heavy-ball" else moves.torque
            self._velocity = rule(self._velocity, move, self.momentum)
            self._x = self._x + self._velocity
            self._z = self._map.rebase(self._x, z)
        else:
            self._z = z
            self._x = self._map.lift(self._z)

    def _move_normalised(self, update: torch.Tensor, radius: float) -> None:
        """Adam's or Adan's per-parameter normalisation of the direction (``update`` / radius,
        lifted), the move ``radius`` per parameter along a steady direction."""
        direction = self._map.lift_delta(update) / radius
        if self.step_adapt > 0:
            self._follow_evidence(direction, self._velocity)
        t = self.steps + 1
        assert self._second is not None
        if self.update == "adam":
            self._velocity, self._second, unit = moves.adam(
                self._velocity, self._second, direction, self.momentum, t
            )
        else:
            assert self._diff is not None
            self._velocity, self._diff, self._second, unit = moves.adan(
                self._velocity, self._diff, self._second, self._last_dir, direction, t
            )
            self._last_dir = direction
        self._x = self._x + radius * unit * self._unit_scale
        self._z = self._map.rebase(self._x, self._z)

    def _follow_evidence(self, move: torch.Tensor, previous: torch.Tensor | None = None) -> None:
        """Lengthen the step when this move continues the last ones, shorten it when it
        turns back (see ``step_adapt``)."""
        if previous is None:
            previous = self._velocity if self.momentum > 0 else self._last_move
        norms = float(move.norm()) * float(previous.norm())
        if norms > 0:
            agreement = float(move @ previous) / norms * math.sqrt(move.numel())
            if self.update in moves.NORMALISED:  # see _AGREEMENT_CAP
                agreement = min(max(agreement, -_AGREEMENT_CAP), _AGREEMENT_CAP)
            if agreement < 0:
                agreement *= _TURN_BACK_WEIGHT
            self.step_scale = min(max(self.step_scale * math.exp(self.step_adapt * agreement),
                                      1e-3), 1e3)  # fmt: skip
        if self.momentum == 0 and self.update in ("heavy-ball", "torque"):
            self._last_move = move

    def _absorb(self) -> None:
        """Fold z into theta0 and redraw the subspace (the parameter-space momentum stays)."""
        self._z = self._map.absorb(self._x, self._z)
        if self.momentum == 0:  # otherwise x is exact already (see rebase)
            self._x = self._map.lift(self._z)

    def _finite(self, costs: torch.Tensor) -> torch.Tensor:
        """Non-finite costs count as the worst finite cost plus a margin (logged): they rank
        last without flattening the softmax of the other costs."""
        finite = torch.isfinite(costs)
        n_bad = int((~finite).sum())
        if n_bad == 0:
            return costs
        refuse_all_non_finite(finite)
        good = costs[finite]
        worst, best = good.max(), good.min()
        margin = torch.maximum(worst - best, worst.abs() * 1e-3).clamp_min(1e-6)
        logger.warning(
            "%d of %d costs were non-finite; treating them as the worst finite cost + %.3g",
            n_bad,
            costs.numel(),
            float(margin),
        )
        return torch.where(finite, costs, worst + margin)

    def _update_best(self, costs: torch.Tensor, directions: torch.Tensor) -> None:
        idx = int(torch.argmin(costs))
        value = float(costs[idx])
        if value < self.best_cost:
            if self._pending_x is None:  # resumed from a checkpoint taken between ask and tell
                self._pending_x = self._candidates(directions)
            self.best_cost = value
            self.best_x = self._pending_x[idx].clone()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors are copies)."""
        return {**super().state_dict(), "subspace": self._map.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into an optimiser built with the same settings."""
        super().load_state_dict({"average": None, **state})  # older states have no mean
        if self.average == 0:
            self._average = None
        elif self._average is None:  # saved without averaging: the mean starts here
            self._average = self._x.clone()
        self._map.load_state_dict(state["subspace"])
        self.steps = int(self.steps)
        self.best_cost = float(self.best_cost)
        self.step_scale = float(self.step_scale)
        self._pending_x = None

    def _header(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "config": self._config()}

    def _check_header(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported PolyStep state version {state.get('version')!r}")
        old = {"update": "heavy-ball", "shaping": "shift", "outer": ()}  # before they were saved
        mine, theirs = self._config(), {**old, **state["config"]}
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise StateMismatchError(
                f"state_dict does not match this optimiser (saved, current): {diff}", list(diff)
            )

    def _config(self) -> dict[str, Any]:
        spec = self._map.spec
        return {
            "num_params": int(self._x.numel()),
            "polytope": self.polytope,
            "block_dim": self.block_dim,
            "num_probe": self.num_probe,
            "sizes": tuple(spec.sizes),
            "ranks": tuple(spec.ranks),
            "absorb_interval": spec.absorb_interval,
            "update": self.update,
            "shaping": self.shaping,
            "outer": tuple(spec.outer),
        }


def _gains_of(subspace: Subspace, tensors: int, block_dim: int) -> list[float]:
    """:meth:`PolyStep.unit_gains` of a subspace already built, one gain per tensor."""
    gains = [
        math.sqrt(block_dim if full else r)
        for r, full in zip(subspace.ranks, subspace.full, strict=True)
    ]
    return gains * tensors if len(gains) < tensors else gains  # joint: one for all


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
