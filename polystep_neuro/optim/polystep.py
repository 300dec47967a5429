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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .polytopes import POLYTOPES, num_vertices, polytope_vertices, random_rotations
from .schedules import Schedule, as_schedule, evaluate
from .solvers import SOLVERS, solve_weights
from .subspace import Subspace, SubspaceMap

logger = logging.getLogger(__name__)

CostsLike = torch.Tensor | np.ndarray | Sequence[float]

_STATE_VERSION = 2
# step_adapt: a move that turns back counts this much more than one that continues, so when
# successive moves only show noise (agreement as often negative as positive) the step decays.
_TURN_BACK_WEIGHT = 1.5


class NonFiniteCostError(ValueError):
    """Every cost of a batch was NaN or infinite, so no direction can be preferred."""


class PolyStep:
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
            of a multiplier on ``step_radius`` (kept within ``[1e-3, 1e3]``); turning back
            counts 1.5 times as much, so a run whose moves only show noise lets its step decay.
        keep_best: track the best evaluated candidate in ``best_x`` / ``best_cost``.
        sinkhorn_tol, sinkhorn_max_iter: stopping rule of the Sinkhorn solver.

    ``step_radius``, ``probe_radius`` and ``epsilon`` accept a float (constant) or a schedule
    (callable of the step index, e.g. :class:`Cosine`).
    """

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
    ) -> None:
        """Long only because it checks every argument before building the search state."""
        x0 = _as_param_vector(x0)
        if polytope not in POLYTOPES:
            raise ValueError(f"polytope must be one of {POLYTOPES}, got {polytope!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        _check_positive_int(block_dim, "block_dim")
        _check_positive_int(num_probe, "num_probe")
        if not (isinstance(step_adapt, (int, float)) and 0.0 <= step_adapt <= 1.0):
            raise ValueError(f"step_adapt must be in [0, 1], got {step_adapt!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not sinkhorn_tol > 0:
            raise ValueError(f"sinkhorn_tol must be positive, got {sinkhorn_tol}")
        _check_positive_int(sinkhorn_max_iter, "sinkhorn_max_iter")
        if subspace is not None and not isinstance(subspace, Subspace):
            raise ValueError(f"subspace must be a Subspace or None, got {type(subspace).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")

        self.polytope = polytope
        self.block_dim = int(block_dim)
        self.num_probe = int(num_probe)
        self.solver = solver
        self.momentum = float(momentum)
        self.step_adapt = float(step_adapt)
        self.keep_best = bool(keep_best)
        self.sinkhorn_tol = float(sinkhorn_tol)
        self.sinkhorn_max_iter = int(sinkhorn_max_iter)
        self.seed = int(seed)
        self.step_radius = as_schedule(step_radius, "step_radius")
        self.probe_radius = as_schedule(probe_radius, "probe_radius")
        self.epsilon = as_schedule(epsilon, "epsilon")

        self.dtype = x0.dtype
        self.device = x0.device
        spec = subspace or Subspace(sizes=[x0.numel()], rank=x0.numel(), absorb_interval=None)
        self.subspace = spec if subspace is not None else None
        self._map = SubspaceMap(spec, x0, self.block_dim, self.seed)
        self._absorb_interval = spec.absorb_interval

        self.num_vertices = num_vertices(polytope, self.block_dim)
        self.num_blocks = self._map.num_blocks
        self._template = polytope_vertices(
            polytope, self.block_dim, dtype=self.dtype, device=self.device
        )
        k = torch.arange(1, self.num_probe + 1, dtype=self.dtype, device=self.device)
        self._probe_scales = k / (self.num_probe + 1)

        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.seed)
        self._z = self._map.initial_z()
        self._x = self._map.lift(self._z)
        self._velocity = torch.zeros_like(self._x)  # in parameter space
        self._last_move = torch.zeros_like(self._x)  # for step_adapt without momentum
        self.step_scale = 1.0  # step_adapt's multiplier on step_radius
        self._step = 0
        self._pending: torch.Tensor | None = None  # directions (P, V, p) of the open ask
        self._pending_x: torch.Tensor | None = None  # candidates, kept only for keep_best
        self.best_x: torch.Tensor | None = None
        self.best_cost: float = float("inf")
        self.last_weights: torch.Tensor | None = None

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
        """Current parameters ``(n,)`` in the full space (a copy)."""
        return self._x.clone()

    @property
    def z(self) -> torch.Tensor:
        """Current search coordinates ``(D,)`` (a copy)."""
        return self._z.clone()

    @property
    def steps(self) -> int:
        """Number of completed steps (tells)."""
        return self._step

    # ------------------------------------------------------------------ ask / tell
    def ask(self) -> torch.Tensor:
        """Candidates ``(N, n)`` to evaluate, on ``x0``'s device and dtype.

        Block-major: row ``(i * V + v) * K + (k - 1)`` is the current point with block ``i``
        moved by ``probe_radius * k / (K + 1)`` along its rotated vertex ``v``.

        Calling ``ask`` again before ``tell`` discards the previous batch and draws a new one.
        """
        rotations = random_rotations(
            self.num_blocks,
            self.block_dim,
            generator=self._generator,
            dtype=self.dtype,
            device=self.device,
        )
        # d[i, v] = R_i u_v
        directions = torch.einsum("ipq,vq->ivp", rotations, self._template)
        candidates = self._candidates(directions)
        self._pending = directions
        self._pending_x = candidates if self.keep_best else None
        return candidates

    def _candidates(self, directions: torch.Tensor) -> torch.Tensor:
        radius = evaluate(self.probe_radius, self._step, "probe_radius")
        # (P, V, K, p) -> (P, V * K, p): probe k of vertex v at radius * s_k along d[i, v].
        deltas = radius * self._probe_scales.view(1, 1, -1, 1) * directions.unsqueeze(2)
        deltas = deltas.reshape(self.num_blocks, -1, self.block_dim)
        return self._map.lift_block_deltas(self._x, deltas)

    def tell(self, costs: CostsLike) -> None:
        """Update from the costs of the last ``ask`` batch (same order, shape ``(N,)``)."""
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask(); call ask() first")
        costs = self._check_costs(costs)
        if self.keep_best:
            self._update_best(costs)
        directions = self._pending
        cost_matrix = costs.view(self.num_blocks, self.num_vertices, self.num_probe).mean(-1)
        eps = evaluate(self.epsilon, self._step, "epsilon")
        weights = solve_weights(
            cost_matrix,
            eps,
            self.solver,
            tol=self.sinkhorn_tol,
            max_iter=self.sinkhorn_max_iter,
        )
        radius = evaluate(self.step_radius, self._step, "step_radius") * self.step_scale
        update = radius * torch.einsum("iv,ivp->ip", weights, directions).reshape(-1)
        z = self._z + update[: self.dim]
        if self.momentum > 0 or self.step_adapt > 0:
            move = self._map.lift_delta(update[: self.dim])
            if self.step_adapt > 0:
                self._follow_evidence(move)
        if self.momentum > 0:
            self._velocity = self.momentum * self._velocity + move
            self._x = self._x + self._velocity
            self._z = self._map.rebase(self._x, z)
        else:
            self._z = z
            self._x = self._map.lift(self._z)
        self.last_weights = weights
        self._pending = None
        self._pending_x = None
        self._step += 1
        if self._absorb_interval is not None and self._step % self._absorb_interval == 0:
            self._absorb()

    def _follow_evidence(self, move: torch.Tensor) -> None:
        """Lengthen the step when this move continues the last ones, shorten it when it
        turns back (see ``step_adapt``)."""
        previous = self._velocity if self.momentum > 0 else self._last_move
        norms = float(move.norm()) * float(previous.norm())
        if norms > 0:
            agreement = float(move @ previous) / norms * math.sqrt(move.numel())
            if agreement < 0:
                agreement *= _TURN_BACK_WEIGHT
            self.step_scale = min(max(self.step_scale * math.exp(self.step_adapt * agreement),
                                      1e-3), 1e3)  # fmt: skip
        if self.momentum == 0:
            self._last_move = move

    def step(self, closure: Callable[[torch.Tensor], CostsLike]) -> torch.Tensor:
        """ask, evaluate ``closure(X)``, tell; returns the batch's costs as a tensor ``(N,)``."""
        candidates = self.ask()
        costs = closure(candidates)
        self.tell(costs)
        if torch.is_tensor(costs):
            return costs
        return torch.as_tensor(np.asarray(costs, dtype=np.float64))

    def _absorb(self) -> None:
        """Fold z into theta0 and redraw the subspace (the parameter-space momentum stays)."""
        self._z = self._map.absorb(self._x, self._z)
        if self.momentum == 0:  # otherwise x is exact already (see rebase)
            self._x = self._map.lift(self._z)

    def _check_costs(self, costs: CostsLike) -> torch.Tensor:
        if not torch.is_tensor(costs):
            costs = torch.as_tensor(np.asarray(costs, dtype=np.float64))
        costs = costs.detach().to(device=self.device, dtype=self.dtype)
        expected = (self.num_candidates,)
        if costs.ndim == 2 and costs.shape[1] == 1:
            costs = costs[:, 0]
        if tuple(costs.shape) != expected:
            raise ValueError(
                f"costs must have shape {expected} (one per candidate of the last ask), "
                f"got {tuple(costs.shape)}"
            )
        finite = torch.isfinite(costs)
        n_bad = int((~finite).sum())
        if n_bad == 0:
            return costs
        if n_bad == costs.numel():
            raise NonFiniteCostError(
                f"all {n_bad} costs were non-finite (NaN or inf); cannot take a step"
            )
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

    def _update_best(self, costs: torch.Tensor) -> None:
        idx = int(torch.argmin(costs))
        value = float(costs[idx])
        if value < self.best_cost:
            if self._pending_x is None:  # resumed from a checkpoint taken between ask and tell
                self._pending_x = self._candidates(self._pending)
            self.best_cost = value
            self.best_x = self._pending_x[idx].clone()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (tensors are copies)."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "step": self._step,
            "z": self._z.clone(),
            "x": self._x.clone(),
            "velocity": self._velocity.clone(),
            "subspace": self._map.state_dict(),
            "generator": self._generator.get_state(),
            "pending": None if self._pending is None else self._pending.clone(),
            "best_x": None if self.best_x is None else self.best_x.clone(),
            "best_cost": self.best_cost,
            "step_scale": self.step_scale,
            "last_move": self._last_move.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` into an optimiser built with the same settings."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported PolyStep state version {state.get('version')!r}")
        mine, theirs = self._config(), state["config"]
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(f"state_dict does not match this optimiser (saved, current): {diff}")
        as_here = {"dtype": self.dtype, "device": self.device}
        self._map.load_state_dict(state["subspace"])
        self._step = int(state["step"])
        self._z = state["z"].to(**as_here).clone()
        self._x = state["x"].to(**as_here).clone()
        self._velocity = state["velocity"].to(**as_here).clone()
        self._generator.set_state(state["generator"].clone())
        pending = state["pending"]
        self._pending = None if pending is None else pending.to(**as_here).clone()
        self._pending_x = None
        best_x = state["best_x"]
        self.best_x = None if best_x is None else best_x.to(**as_here).clone()
        self.best_cost = float(state["best_cost"])
        self.step_scale = float(state["step_scale"])
        self._last_move = state["last_move"].to(**as_here).clone()

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
        }


def _as_param_vector(x0: torch.Tensor | np.ndarray) -> torch.Tensor:
    if not torch.is_tensor(x0):
        x0 = torch.as_tensor(np.asarray(x0))
    if not torch.is_floating_point(x0):
        x0 = x0.to(torch.get_default_dtype())
    if x0.ndim != 1 or x0.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 1-D vector, got shape {tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains non-finite values")
    return x0.detach().clone()


def _check_positive_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
