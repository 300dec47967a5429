"""Non-spiking black boxes a user hands an optimiser directly (ask/tell), for the black-box
bench: noisy quadratics, a small MLP and a logistic regression on minibatches, Rosenbrock and
Ackley.

Each problem gives a start, the sizes of its tensors, a *unit* (a sensible probe distance in
its coordinates: the one scale every method is told), a budget in evaluations, the noisy
cost the optimiser sees (a batch of points -> one cost each) and the score it is judged by
(the noise-free cost, or the test loss for the models).  A problem belongs to the half
PolyStep's standalone defaults were chosen on (``tuned``) or to the half only reported
(``held-out``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from polystep_neuro.optim.testfunctions import ackley, rosenbrock

TUNED, HELD_OUT = "tuned", "held-out"
Cost = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Problem:
    """One black box, built for one seed (its noise and minibatches follow that seed)."""

    name: str
    half: str
    what: str
    x0: torch.Tensor
    sizes: tuple[int, ...]
    unit: float
    evaluations: int
    cost: Cost  # (N, n) -> (N,): what the optimiser sees
    score: Callable[[torch.Tensor], float]  # (n,) -> what the method is judged by
    solved: float | None = None  # a score at or below this found the global minimum


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quadratic(
    name: str, half: str, dim: int, condition: float, noise: float, spread: float, unit: float,
    evaluations: int, seed: int,
) -> Problem:  # fmt: skip
    """``sum_i c_i (x_i - t_i)^2`` plus Gaussian noise of sd ``noise`` per evaluation, with
    ``c`` log-spaced from 1 to ``condition`` and the target ``t`` uniform in
    ``[-spread, spread]``; the start is the origin."""
    curvature = torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)
    target = torch.rand(dim, generator=_generator(1000 + seed), dtype=torch.float64) * 2 - 1
    target = target * spread
    noise_gen = _generator(2000 + seed)

    def exact(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2 * curvature).sum(-1)

    def cost(x: torch.Tensor) -> torch.Tensor:
        value = exact(x)
        return value + noise * torch.randn(value.shape, generator=noise_gen, dtype=x.dtype)

    return Problem(
        name, half, f"{dim}-D quadratic, condition {condition:g}, noise sd {noise:g}",
        torch.zeros(dim, dtype=torch.float64), (dim,), unit, evaluations, cost,
        lambda x: float(exact(x)),
    )  # fmt: skip


def _split(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    """The project's own split of a bundled dataset, as float64 tensors."""
    from polystep_neuro.run.data import load_split

    split = load_split(name, seed)
    return (
        torch.as_tensor(split.x_train, dtype=torch.float64),
        torch.as_tensor(split.y_train),
        torch.as_tensor(split.x_test, dtype=torch.float64),
        torch.as_tensor(split.y_test),
    )


def _minibatch_model(
    name: str, half: str, what: str, data: tuple[torch.Tensor, ...], shapes: list[tuple[int, ...]],
    x0: torch.Tensor, forward: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor],
    unit: float, evaluations: int, seed: int, batch: int = 256,
) -> Problem:  # fmt: skip
    """A classifier's cross-entropy on a fresh training minibatch per ask (the same one for
    every candidate of the ask), judged by its loss on the held-out test split."""
    x_train, y_train, x_test, y_test = data
    batches = _generator(3000 + seed)

    def unpack(points: torch.Tensor) -> list[torch.Tensor]:
        tensors, at = [], 0
        for shape in shapes:
            size = math.prod(shape)
            tensors.append(points[:, at : at + size].reshape(points.shape[0], *shape))
            at += size
        return tensors

    def cost(points: torch.Tensor) -> torch.Tensor:
        pick = torch.randint(0, len(x_train), (batch,), generator=batches)
        logits = forward(unpack(points), x_train[pick])  # (N, batch, classes)
        labels = y_train[pick].expand(points.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(-1)

    def score(x: torch.Tensor) -> float:
        logits = forward(unpack(x[None].to(torch.float64)), x_test)[0]
        return float(F.cross_entropy(logits, y_test))

    sizes = tuple(math.prod(s) for s in shapes)
    return Problem(name, half, what, x0, sizes, unit, evaluations, cost, score)


def mlp_digits(seed: int) -> Problem:
    """A 64-16-10 tanh MLP (1,210 parameters) on sklearn's digits, from a random start."""
    hidden, gen = 16, _generator(seed)
    shapes = [(hidden, 64), (hidden,), (10, hidden), (10,)]
    x0 = torch.cat([
        torch.randn(hidden * 64, generator=gen, dtype=torch.float64) / 8,
        torch.zeros(hidden, dtype=torch.float64),
        torch.randn(10 * hidden, generator=gen, dtype=torch.float64) / math.sqrt(hidden),
        torch.zeros(10, dtype=torch.float64),
    ])  # fmt: skip

    def forward(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(torch.einsum("nhi,bi->nbh", p[0], x) + p[1][:, None])
        return torch.einsum("nch,nbh->nbc", p[2], h) + p[3][:, None]

    return _minibatch_model(
        "mlp-digits", TUNED, "64-16-10 tanh MLP on digits, minibatches of 256",
        _split("digits", seed), shapes, x0, forward, 0.05, 60_000, seed,
    )  # fmt: skip


def logreg_mnist(seed: int) -> Problem:
    """Multinomial logistic regression on mnist5k's 784 pixels (7,850 parameters)."""
    shapes = [(10, 784), (10,)]
    x0 = torch.zeros(10 * 784 + 10, dtype=torch.float64)

    def forward(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nci,bi->nbc", p[0], x) + p[1][:, None]

    return _minibatch_model(
        "logreg-mnist", HELD_OUT, "784-10 logistic regression on mnist5k, minibatches of 256",
        _split("mnist5k", seed), shapes, x0, forward, 0.01, 100_000, seed,
    )  # fmt: skip


def rosenbrock20(seed: int) -> Problem:
    """Rosenbrock in 20-D, noise-free, from a start drawn in [-1, 1]^20."""
    x0 = torch.rand(20, generator=_generator(seed), dtype=torch.float64) * 2 - 1
    return Problem(
        "rosenbrock20", HELD_OUT, "20-D Rosenbrock, noise-free", x0, (20,), 0.1, 40_000,
        rosenbrock, lambda x: float(rosenbrock(x)),
    )  # fmt: skip


def ackley30(seed: int) -> Problem:
    """Ackley in 30-D (many local minima), from a start drawn in [-3, 3]^30."""
    x0 = (torch.rand(30, generator=_generator(seed), dtype=torch.float64) * 2 - 1) * 3
    return Problem(
        "ackley30", HELD_OUT, "30-D Ackley, many local minima", x0, (30,), 0.5, 30_000,
        ackley, lambda x: float(ackley(x)), solved=1e-2,
    )  # fmt: skip


PROBLEMS: dict[str, Callable[[int], Problem]] = {
    "quad50-noisy": lambda seed: quadratic(
        "quad50-noisy", TUNED, 50, 100.0, 0.1, 1.0, 0.1, 20_000, seed
    ),
    "mlp-digits": mlp_digits,
    "quad200-far": lambda seed: quadratic(
        "quad200-far", HELD_OUT, 200, 1000.0, 1.0, 10.0, 1.0, 80_000, seed
    ),
    "rosenbrock20": rosenbrock20,
    "ackley30": ackley30,
    "logreg-mnist": logreg_mnist,
}
