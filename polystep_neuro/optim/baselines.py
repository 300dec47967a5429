"""Reference black-box optimisers with PolyStep's ask/tell shape, for honest comparisons.

All of them: ``ask() -> (N, n)`` torch tensor on ``x0``'s device/dtype, ``tell(costs)`` with
``(N,)`` costs in the same order, ``x`` the current point, ``num_candidates`` = N, and (all
but pycma's) ``state_dict`` / ``load_state_dict`` that resume bit-identically.  Seeded
through their own generator so benchmark runs are reproducible.

- :class:`RandomSearch`: Gaussian perturbations of the best point seen so far, fixed (or
  scheduled) sigma -- the "no cleverness" baseline at equal evaluation count.
- :class:`OpenAIES`: antithetic evolution strategies (Salimans et al., 2017) with centred-rank
  fitness shaping and Adam (or plain SGD) on the ES gradient estimate.
- :class:`SepCMAES`: separable (diagonal) CMA-ES (Ros & Hansen, 2008) in torch, with an
  exact ``state_dict`` -- what ``--optimizer sep-cma`` runs.
- :class:`CMAES`: thin adapter over pycma's ask/tell (needs ``cma`` installed; the benchmark's
  reference implementation).
- :class:`SPSA`: simultaneous perturbation stochastic approximation (Spall, 1992): two
  evaluations per step, whatever the dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

# A number or a schedule (callable of the step index), for sigma and learning rates.
Sigma = float | Callable[[int], float]


def _to_vector(x0: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = x0 if torch.is_tensor(x0) else torch.as_tensor(np.asarray(x0))
    if not torch.is_floating_point(x):
        x = x.to(torch.get_default_dtype())
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 1-D vector, got shape {tuple(x.shape)}")
    return x.detach().clone()


def _to_costs(costs, n: int, like: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(costs):
        costs = torch.as_tensor(np.asarray(costs, dtype=np.float64))
    costs = costs.detach().to(device=like.device, dtype=like.dtype).reshape(-1)
    if costs.numel() != n:
        raise ValueError(f"costs must have shape ({n},), got {tuple(costs.shape)}")
    # Non-finite costs lose every comparison.
    return torch.nan_to_num(costs, nan=math.inf, posinf=math.inf, neginf=math.inf)


def _tensor_state(obj: object, names: Sequence[str]) -> dict[str, Any]:
    """Copies of the named tensor / number attributes and the generator state."""
    state: dict[str, Any] = {"kind": type(obj).__name__}
    for name in names:
        value = getattr(obj, name)
        state[name] = value.clone() if torch.is_tensor(value) else value
    state["generator"] = obj._gen.get_state()  # type: ignore[attr-defined]
    return state


def _load_tensor_state(obj: object, state: dict[str, Any], names: Sequence[str]) -> None:
    if state.get("kind") != type(obj).__name__:
        raise ValueError(f"state_dict is of a {state.get('kind')}, not a {type(obj).__name__}")
    like = obj.x  # type: ignore[attr-defined]
    for name in names:
        value, mine = state[name], getattr(obj, name)
        if torch.is_tensor(value):
            if torch.is_tensor(mine) and value.shape != mine.shape:
                raise ValueError(
                    f"state_dict {name} has shape {tuple(value.shape)}, this optimiser "
                    f"{tuple(mine.shape)}"
                )
            value = value.to(like.device).clone()
        setattr(obj, name, value)
    obj._gen.set_state(state["generator"].clone())  # type: ignore[attr-defined]


def _sigma_at(sigma: Sigma, step: int) -> float:
    return float(sigma(step)) if callable(sigma) else float(sigma)


class RandomSearch:
    """Sample Gaussian perturbations of the incumbent; keep a candidate only if it is better."""

    def __init__(
        self, x0: torch.Tensor | np.ndarray, sigma: Sigma, popsize: int, seed: int = 0
    ) -> None:
        if popsize < 1:
            raise ValueError(f"popsize must be positive, got {popsize}")
        self.best_x = _to_vector(x0)
        self.best_cost = math.inf
        self.sigma = sigma
        self.num_candidates = int(popsize)
        self.steps = 0
        self._gen = torch.Generator(device=self.best_x.device)
        self._gen.manual_seed(seed)
        self._pending: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        return self.best_x.clone()

    def ask(self) -> torch.Tensor:
        x = self.best_x
        noise = torch.randn(
            self.num_candidates, x.numel(), generator=self._gen, dtype=x.dtype, device=x.device
        )
        self._pending = x + _sigma_at(self.sigma, self.steps) * noise
        return self._pending

    def tell(self, costs) -> None:
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask()")
        costs = _to_costs(costs, self.num_candidates, self.best_x)
        idx = int(torch.argmin(costs))
        if float(costs[idx]) < self.best_cost:
            self.best_cost = float(costs[idx])
            self.best_x = self._pending[idx].clone()
        self._pending = None
        self.steps += 1

    _STATE = ("best_x", "best_cost", "steps", "_pending")

    def state_dict(self) -> dict[str, Any]:
        return _tensor_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_tensor_state(self, state, self._STATE)


class OpenAIES:
    """Antithetic OpenAI-ES with centred ranks and Adam (``optimizer="adam"``) or SGD.

    ``sigma`` and ``lr`` are numbers or schedules of the step index.
    """

    def __init__(
        self,
        x0: torch.Tensor | np.ndarray,
        sigma: Sigma,
        lr: Sigma,
        popsize: int,
        seed: int = 0,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
    ) -> None:
        if popsize < 2 or popsize % 2:
            raise ValueError(f"popsize must be an even number >= 2 (antithetic), got {popsize}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self._x = _to_vector(x0)
        self.sigma = sigma
        self.lr = lr
        self.num_candidates = int(popsize)
        self.optimizer = optimizer
        self.betas = betas
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self._m = torch.zeros_like(self._x)
        self._v = torch.zeros_like(self._x)
        self._gen = torch.Generator(device=self._x.device)
        self._gen.manual_seed(seed)
        self._eps: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        return self._x.clone()

    def ask(self) -> torch.Tensor:
        half = self.num_candidates // 2
        x = self._x
        eps = torch.randn(half, x.numel(), generator=self._gen, dtype=x.dtype, device=x.device)
        self._eps = eps
        step = _sigma_at(self.sigma, self.steps) * eps
        return torch.cat([x + step, x - step], dim=0)

    def tell(self, costs) -> None:
        if self._eps is None:
            raise RuntimeError("tell() called without a pending ask()")
        costs = _to_costs(costs, self.num_candidates, self._x)
        n = self.num_candidates
        ranks = torch.empty_like(costs)
        ranks[torch.argsort(costs)] = torch.arange(n, dtype=costs.dtype, device=costs.device)
        util = ranks / (n - 1) - 0.5  # low cost -> negative utility
        half = n // 2
        sigma = _sigma_at(self.sigma, self.steps)
        grad = (util[:half] - util[half:]) @ self._eps / (n * sigma)
        grad = grad + self.weight_decay * self._x
        lr = _sigma_at(self.lr, self.steps)
        self.steps += 1
        if self.optimizer == "sgd":
            self._x = self._x - lr * grad
        else:
            b1, b2 = self.betas
            self._m = b1 * self._m + (1 - b1) * grad
            self._v = b2 * self._v + (1 - b2) * grad * grad
            m_hat = self._m / (1 - b1**self.steps)
            v_hat = self._v / (1 - b2**self.steps)
            self._x = self._x - lr * m_hat / (v_hat.sqrt() + 1e-8)
        self._eps = None

    _STATE = ("_x", "_m", "_v", "steps", "_eps")

    def state_dict(self) -> dict[str, Any]:
        return _tensor_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_tensor_state(self, state, self._STATE)


class SepCMAES:
    """Separable CMA-ES (Ros & Hansen, 2008): CMA-ES with a diagonal covariance, whose
    learning rates are raised by ``(n + 2) / 3`` -- linear time per sample, so it scales to
    the thousands of weights of a layer.  Default (Hansen's) strategy parameters for the
    population size, weights, step-size (CSA) and covariance learning rates."""

    def __init__(
        self, x0: torch.Tensor | np.ndarray, sigma: float, popsize: int, seed: int = 0
    ) -> None:
        if popsize < 2:
            raise ValueError(f"popsize must be at least 2, got {popsize}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self._mean = _to_vector(x0)
        like = self._mean
        n = like.numel()
        self.num_candidates = int(popsize)
        mu = popsize // 2
        w = math.log(mu + 0.5) - torch.log(torch.arange(1, mu + 1, dtype=torch.float64))
        w = w / w.sum()
        self._weights = w.to(like)
        mueff = float(1.0 / (w**2).sum())
        self._mueff = mueff
        self._cs = (mueff + 2) / (n + mueff + 5)
        self._ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + self._cs
        self._cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
        boost = (n + 2) / 3  # the separable variant learns the diagonal faster
        self._c1 = min(1.0, c1 * boost)
        self._cmu = min(1.0 - self._c1, cmu * boost)
        self._chi = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.sigma = float(sigma)
        self._diag = torch.ones_like(like)
        self._ps = torch.zeros_like(like)
        self._pc = torch.zeros_like(like)
        self.steps = 0
        self._gen = torch.Generator(device=like.device)
        self._gen.manual_seed(seed)
        self._z: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        return self._mean.clone()

    def ask(self) -> torch.Tensor:
        like = self._mean
        self._z = torch.randn(
            self.num_candidates, like.numel(), generator=self._gen, dtype=like.dtype,
            device=like.device,
        )  # fmt: skip
        return self._mean + self.sigma * self._z * self._diag.sqrt()

    def tell(self, costs) -> None:
        if self._z is None:
            raise RuntimeError("tell() called without a pending ask()")
        costs = _to_costs(costs, self.num_candidates, self._mean)
        order = torch.argsort(costs)[: self._weights.numel()]
        z_sel = self._z[order]
        z_w = self._weights @ z_sel
        y_sel = z_sel * self._diag.sqrt()
        y_w = self._weights @ y_sel
        self._mean = self._mean + self.sigma * y_w
        self.steps += 1
        self._ps = (1 - self._cs) * self._ps + math.sqrt(
            self._cs * (2 - self._cs) * self._mueff
        ) * z_w
        norm = float(self._ps.norm())
        h_sigma = (
            norm / math.sqrt(1 - (1 - self._cs) ** (2 * self.steps))
            < (1.4 + 2 / (self._mean.numel() + 1)) * self._chi
        )
        self._pc = (1 - self._cc) * self._pc
        if h_sigma:
            self._pc = self._pc + math.sqrt(self._cc * (2 - self._cc) * self._mueff) * y_w
        rank_one = self._pc**2
        if not h_sigma:
            rank_one = rank_one + self._cc * (2 - self._cc) * self._diag
        rank_mu = self._weights @ (y_sel**2)
        self._diag = (
            (1 - self._c1 - self._cmu) * self._diag + self._c1 * rank_one + self._cmu * rank_mu
        )
        self.sigma *= math.exp(min(1.0, (self._cs / self._ds) * (norm / self._chi - 1)))
        self._z = None

    _STATE = ("_mean", "_diag", "_ps", "_pc", "sigma", "steps", "_z")

    def state_dict(self) -> dict[str, Any]:
        return _tensor_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_tensor_state(self, state, self._STATE)


class CMAES:
    """pycma's CMA-ES behind the same ask/tell shape (torch in, torch out).

    ``diagonal=True`` runs sep-CMA-ES (pycma's ``CMA_diagonal``): a diagonal covariance,
    linear cost per sample, for dimensions where the full covariance update is too slow.
    """

    def __init__(
        self,
        x0: torch.Tensor | np.ndarray,
        sigma: float,
        popsize: int,
        seed: int = 0,
        diagonal: bool = False,
    ) -> None:
        import cma  # optional dependency, only needed for this baseline

        self._like = _to_vector(x0)
        opts = {"popsize": int(popsize), "seed": int(seed) + 1, "verbose": -9}
        if diagonal:  # sep-CMA-ES: diagonal covariance, O(n) per sample (for large n)
            opts["CMA_diagonal"] = True
        self._es = cma.CMAEvolutionStrategy(self._like.cpu().double().numpy(), sigma, opts)
        self.num_candidates = int(popsize)
        self._pending: list[np.ndarray] | None = None

    @property
    def x(self) -> torch.Tensor:
        return torch.as_tensor(self._es.mean).to(self._like)

    def ask(self) -> torch.Tensor:
        self._pending = self._es.ask()
        return torch.as_tensor(np.stack(self._pending)).to(self._like)

    def tell(self, costs) -> None:
        if self._pending is None:
            raise RuntimeError("tell() called without a pending ask()")
        values = _to_costs(costs, self.num_candidates, self._like.double()).cpu().numpy()
        # pycma rejects inf; a large finite value keeps the ranking.
        values = np.where(np.isfinite(values), values, np.finfo(np.float64).max / 4)
        self._es.tell(self._pending, values.tolist())
        self._pending = None


class SPSA:
    """Simultaneous perturbation stochastic approximation with Spall's gain sequences.

    Step ``k`` (from 0) asks for the two points ``x + c_k * delta`` and ``x - c_k * delta``
    with a Rademacher ``delta`` (every entry +-1), estimates the gradient as
    ``(y_plus - y_minus) / (2 * c_k) * delta`` (``1 / delta_i = delta_i``) and moves
    ``x <- x - a_k * g`` with

        a_k = a / (k + 1 + A) ** alpha,     c_k = c / (k + 1) ** gamma,

    ``alpha = 0.602`` and ``gamma = 0.101`` by default (Spall's practical exponents; the
    asymptotically optimal ones are 1 and 1/6).  ``A`` (the stability constant) is
    typically about 10 % of the number of steps.  ``max_step`` optionally clips each
    entry of the move ``a_k * g`` to ``[-max_step, max_step]`` (a common safeguard against a
    large first gradient estimate; ``None``: no clipping).
    """

    def __init__(
        self,
        x0: torch.Tensor | np.ndarray,
        a: float,
        c: float,
        A: float = 0.0,
        alpha: float = 0.602,
        gamma: float = 0.101,
        seed: int = 0,
        max_step: float | None = None,
    ) -> None:
        if not a > 0 or not c > 0:
            raise ValueError(f"gains a and c must be positive, got a={a}, c={c}")
        if A < 0:
            raise ValueError(f"stability constant A must be >= 0, got {A}")
        if max_step is not None and not max_step > 0:
            raise ValueError(f"max_step must be positive or None, got {max_step}")
        self._x = _to_vector(x0)
        self.a, self.c, self.A = float(a), float(c), float(A)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.max_step = None if max_step is None else float(max_step)
        self.num_candidates = 2
        self.steps = 0
        self._gen = torch.Generator(device=self._x.device)
        self._gen.manual_seed(seed)
        self._delta: torch.Tensor | None = None

    @property
    def x(self) -> torch.Tensor:
        return self._x.clone()

    def gains(self, step: int | None = None) -> tuple[float, float]:
        """``(a_k, c_k)`` at ``step`` (default: the current step)."""
        k = self.steps if step is None else int(step)
        return self.a / (k + 1 + self.A) ** self.alpha, self.c / (k + 1) ** self.gamma

    def ask(self) -> torch.Tensor:
        x = self._x
        bits = torch.randint(0, 2, (x.numel(),), generator=self._gen, device=x.device)
        self._delta = bits.to(x.dtype) * 2 - 1
        _, c_k = self.gains()
        return torch.stack([x + c_k * self._delta, x - c_k * self._delta])

    def tell(self, costs) -> None:
        if self._delta is None:
            raise RuntimeError("tell() called without a pending ask()")
        costs = _to_costs(costs, 2, self._x)
        a_k, c_k = self.gains()
        diff = costs[0] - costs[1]
        if torch.isfinite(diff):  # a non-finite pair carries no direction: skip the move
            move = a_k * (diff / (2 * c_k)) * self._delta
            if self.max_step is not None:
                move = move.clamp(-self.max_step, self.max_step)
            self._x = self._x - move
        self._delta = None
        self.steps += 1

    _STATE = ("_x", "steps", "_delta")

    def state_dict(self) -> dict[str, Any]:
        return _tensor_state(self, self._STATE)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _load_tensor_state(self, state, self._STATE)
