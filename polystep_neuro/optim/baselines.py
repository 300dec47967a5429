"""Reference black-box optimisers with PolyStep's ask/tell shape, for honest comparisons.

All of them are :class:`~polystep_neuro.optim.base.AskTellOptimizer`: ``ask() -> (N, n)``
torch tensor on ``x0``'s device/dtype, ``tell(costs)`` with ``(N,)`` costs in the same order,
``x`` the current point, ``num_candidates`` = N, and (all but pycma's) ``state_dict`` /
``load_state_dict`` that resume bit-identically.  Seeded through their own generator so
benchmark runs are reproducible.  Only their proposals and updates are written here.

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
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .base import AskTellOptimizer, Schedule, as_vector, value_at

# A number or a schedule (callable of the step index), for sigma and learning rates.
Sigma = Schedule


class RandomSearch(AskTellOptimizer):
    """Sample Gaussian perturbations of the incumbent; keep a candidate only if it is better."""

    _state = {
        "best_x": "best_x",
        "best_cost": "best_cost",
        "steps": "steps",
        "_pending": "_pending",
    }

    def __init__(
        self, x0: torch.Tensor | np.ndarray, sigma: Sigma, popsize: int, seed: int = 0
    ) -> None:
        if popsize < 1:
            raise ValueError(f"popsize must be positive, got {popsize}")
        super().__init__(x0, seed)
        self.best_x = as_vector(x0)
        self.best_cost = math.inf
        self.sigma = sigma
        self.num_candidates = int(popsize)

    @property
    def x(self) -> torch.Tensor:
        return self.best_x.clone()

    def _propose(self) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self._normal(self.num_candidates)
        candidates = self.best_x + value_at(self.sigma, self.steps) * noise
        return candidates, candidates

    def _update(self, costs: torch.Tensor, pending: torch.Tensor) -> None:
        idx = int(torch.argmin(costs))
        if float(costs[idx]) < self.best_cost:
            self.best_cost = float(costs[idx])
            self.best_x = pending[idx].clone()


class OpenAIES(AskTellOptimizer):
    """Antithetic OpenAI-ES with centred ranks and Adam (``optimizer="adam"``) or SGD.

    ``sigma`` and ``lr`` are numbers or schedules of the step index.
    """

    name = "openai-es"
    options = ("popsize", "lr")
    _state = {"_x": "_x", "_m": "_m", "_v": "_v", "steps": "steps", "_eps": "_pending"}

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
        super().__init__(x0, seed)
        self._x = as_vector(x0)
        self.sigma = sigma
        self.lr = lr
        self.num_candidates = int(popsize)
        self.optimizer = optimizer
        self.betas = betas
        self.weight_decay = float(weight_decay)
        self._m = torch.zeros_like(self._x)
        self._v = torch.zeros_like(self._x)

    @classmethod
    def for_units(
        cls,
        x0: torch.Tensor,
        *,
        sizes: Sequence[int],
        total_steps: int,
        seed: int,
        popsize: int,
        lr: float,
        **options: Any,
    ) -> OpenAIES:
        """Perturbations of one unit (sigma 1), Adam steps of ``lr`` units."""
        popsize = cls.candidates_for(sizes, popsize=popsize)
        return cls(x0, sigma=1.0, lr=lr, popsize=popsize, seed=seed)

    @classmethod
    def candidates_for(cls, sizes: Sequence[int], *, popsize: int, **options: Any) -> int:
        return popsize + popsize % 2  # antithetic pairs

    @property
    def x(self) -> torch.Tensor:
        return self._x.clone()

    def _propose(self) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self._normal(self.num_candidates // 2)
        step = value_at(self.sigma, self.steps) * eps
        return torch.cat([self._x + step, self._x - step], dim=0), eps

    def _update(self, costs: torch.Tensor, eps: torch.Tensor) -> None:
        n = self.num_candidates
        ranks = torch.empty_like(costs)
        ranks[torch.argsort(costs)] = torch.arange(n, dtype=costs.dtype, device=costs.device)
        util = ranks / (n - 1) - 0.5  # low cost -> negative utility
        half = n // 2
        sigma = value_at(self.sigma, self.steps)
        grad = (util[:half] - util[half:]) @ eps / (n * sigma)
        grad = grad + self.weight_decay * self._x
        lr = value_at(self.lr, self.steps)
        if self.optimizer == "sgd":
            self._x = self._x - lr * grad
            return
        t = self.steps + 1
        b1, b2 = self.betas
        self._m = b1 * self._m + (1 - b1) * grad
        self._v = b2 * self._v + (1 - b2) * grad * grad
        m_hat = self._m / (1 - b1**t)
        v_hat = self._v / (1 - b2**t)
        self._x = self._x - lr * m_hat / (v_hat.sqrt() + 1e-8)


class SepCMAES(AskTellOptimizer):
    """Separable CMA-ES (Ros & Hansen, 2008): CMA-ES with a diagonal covariance, whose
    learning rates are raised by ``(n + 2) / 3`` -- linear time per sample, so it scales to
    the thousands of weights of a layer.  Default (Hansen's) strategy parameters for the
    population size, weights, step-size (CSA) and covariance learning rates."""

    name = "sep-cma"
    options = ("popsize",)
    _state = {
        "_mean": "_mean", "_diag": "_diag", "_ps": "_ps", "_pc": "_pc", "sigma": "sigma",
        "steps": "steps", "_z": "_pending",
    }  # fmt: skip

    def __init__(
        self, x0: torch.Tensor | np.ndarray, sigma: float, popsize: int, seed: int = 0
    ) -> None:
        if popsize < 2:
            raise ValueError(f"popsize must be at least 2, got {popsize}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        super().__init__(x0, seed)
        self._mean = as_vector(x0)
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

    @classmethod
    def for_units(
        cls,
        x0: torch.Tensor,
        *,
        sizes: Sequence[int],
        total_steps: int,
        seed: int,
        popsize: int,
        **options: Any,
    ) -> SepCMAES:
        """Initial step of one unit (sigma 1)."""
        return cls(x0, sigma=1.0, popsize=popsize, seed=seed)

    @classmethod
    def candidates_for(cls, sizes: Sequence[int], *, popsize: int, **options: Any) -> int:
        return popsize

    @property
    def x(self) -> torch.Tensor:
        return self._mean.clone()

    def _propose(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._normal(self.num_candidates)
        return self._mean + self.sigma * z * self._diag.sqrt(), z

    def _update(self, costs: torch.Tensor, z: torch.Tensor) -> None:
        order = torch.argsort(costs)[: self._weights.numel()]
        z_sel = z[order]
        z_w = self._weights @ z_sel
        y_sel = z_sel * self._diag.sqrt()
        y_w = self._weights @ y_sel
        self._mean = self._mean + self.sigma * y_w
        t = self.steps + 1
        self._ps = (1 - self._cs) * self._ps + math.sqrt(
            self._cs * (2 - self._cs) * self._mueff
        ) * z_w
        norm = float(self._ps.norm())
        h_sigma = (
            norm / math.sqrt(1 - (1 - self._cs) ** (2 * t))
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


class CMAES(AskTellOptimizer):
    """pycma's CMA-ES behind the same ask/tell shape (torch in, torch out); no checkpoint.

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

        super().__init__(x0, seed)
        self._like = as_vector(x0)
        opts = {"popsize": int(popsize), "seed": int(seed) + 1, "verbose": -9}
        if diagonal:  # sep-CMA-ES: diagonal covariance, O(n) per sample (for large n)
            opts["CMA_diagonal"] = True
        self._es = cma.CMAEvolutionStrategy(self._like.cpu().double().numpy(), sigma, opts)
        self.num_candidates = int(popsize)

    @property
    def x(self) -> torch.Tensor:
        return torch.as_tensor(self._es.mean).to(self._like)

    def _propose(self) -> tuple[torch.Tensor, list[np.ndarray]]:
        pending = self._es.ask()
        return torch.as_tensor(np.stack(pending)).to(self._like), pending

    def _update(self, costs: torch.Tensor, pending: list[np.ndarray]) -> None:
        values = costs.double().cpu().numpy()
        # pycma rejects inf; a large finite value keeps the ranking.
        values = np.where(np.isfinite(values), values, np.finfo(np.float64).max / 4)
        self._es.tell(pending, values.tolist())

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("pycma's CMA-ES is not checkpointed here; use SepCMAES")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("pycma's CMA-ES is not checkpointed here; use SepCMAES")


class SPSA(AskTellOptimizer):
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

    name = "spsa"
    _state = {"_x": "_x", "steps": "steps", "_delta": "_pending"}

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
        super().__init__(x0, seed)
        self._x = as_vector(x0)
        self.a, self.c, self.A = float(a), float(c), float(A)
        self.alpha, self.gamma = float(alpha), float(gamma)
        self.max_step = None if max_step is None else float(max_step)
        self.num_candidates = 2

    @classmethod
    def for_units(
        cls, x0: torch.Tensor, *, sizes: Sequence[int], total_steps: int, seed: int, **options: Any
    ) -> SPSA:
        """Probes and gain of one unit; Spall's stability constant at a tenth of the run."""
        return cls(x0, a=1.0, c=1.0, A=0.1 * max(int(total_steps), 1), seed=seed)

    @classmethod
    def candidates_for(cls, sizes: Sequence[int], **options: Any) -> int:
        return 2

    @property
    def x(self) -> torch.Tensor:
        return self._x.clone()

    def gains(self, step: int | None = None) -> tuple[float, float]:
        """``(a_k, c_k)`` at ``step`` (default: the current step)."""
        k = self.steps if step is None else int(step)
        return self.a / (k + 1 + self.A) ** self.alpha, self.c / (k + 1) ** self.gamma

    def _propose(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._x
        bits = torch.randint(0, 2, (x.numel(),), generator=self._gen, device=x.device)
        delta = bits.to(x.dtype) * 2 - 1
        _, c_k = self.gains()
        return torch.stack([x + c_k * delta, x - c_k * delta]), delta

    def _update(self, costs: torch.Tensor, delta: torch.Tensor) -> None:
        a_k, c_k = self.gains()
        diff = costs[0] - costs[1]
        if torch.isfinite(diff):  # a non-finite pair carries no direction: skip the move
            move = a_k * (diff / (2 * c_k)) * delta
            if self.max_step is not None:
                move = move.clamp(-self.max_step, self.max_step)
            self._x = self._x - move
