"""Reference black-box optimisers with PolyStep's ask/tell shape, for honest comparisons.

All of them: ``ask() -> (N, n)`` torch tensor on ``x0``'s device/dtype, ``tell(costs)`` with
``(N,)`` costs in the same order, ``x`` the current point, ``num_candidates`` = N.  Seeded
through their own generator so benchmark runs are reproducible.

- :class:`RandomSearch`: Gaussian perturbations of the best point seen so far, fixed (or
  scheduled) sigma -- the "no cleverness" baseline at equal evaluation count.
- :class:`OpenAIES`: antithetic evolution strategies (Salimans et al., 2017) with centred-rank
  fitness shaping and Adam (or plain SGD) on the ES gradient estimate.
- :class:`CMAES`: thin adapter over pycma's ask/tell (needs ``cma`` installed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


class CMAES:
    """pycma's CMA-ES behind the same ask/tell shape (torch in, torch out)."""

    def __init__(
        self, x0: torch.Tensor | np.ndarray, sigma: float, popsize: int, seed: int = 0
    ) -> None:
        import cma  # optional dependency, only needed for this baseline

        self._like = _to_vector(x0)
        opts = {"popsize": int(popsize), "seed": int(seed) + 1, "verbose": -9}
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
