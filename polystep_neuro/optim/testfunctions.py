"""Classic optimisation test functions, vectorised over a batch of points.

Each takes ``x`` of shape ``(N, d)`` (or ``(d,)``) and returns costs ``(N,)`` (or a scalar),
on ``x``'s device and dtype, with a global minimum of 0.  Shared by the tests and benchmarks.
"""

from __future__ import annotations

import math

import torch


def ackley(x: torch.Tensor) -> torch.Tensor:
    """Ackley (a=20, b=0.2, c=2*pi); minimum 0 at the origin, usual box [-32.768, 32.768]."""
    d = x.shape[-1]
    term1 = -20.0 * torch.exp(-0.2 * torch.sqrt((x * x).sum(-1) / d))
    term2 = -torch.exp(torch.cos(2.0 * math.pi * x).sum(-1) / d)
    return term1 + term2 + 20.0 + math.e


def rastrigin(x: torch.Tensor) -> torch.Tensor:
    """Rastrigin (A=10); minimum 0 at the origin, usual box [-5.12, 5.12]."""
    d = x.shape[-1]
    return 10.0 * d + (x * x - 10.0 * torch.cos(2.0 * math.pi * x)).sum(-1)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """Rosenbrock; minimum 0 at (1, ..., 1), usual box [-2.048, 2.048]."""
    head, tail = x[..., :-1], x[..., 1:]
    return (100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum(-1)


def staircase(x: torch.Tensor, step: float = 1.0) -> torch.Tensor:
    """``floor(||x||^2 / step)``: piecewise constant, its gradient is zero almost everywhere."""
    return torch.floor((x * x).sum(-1) / step)


FUNCTIONS = {"ackley": ackley, "rastrigin": rastrigin, "rosenbrock": rosenbrock}
