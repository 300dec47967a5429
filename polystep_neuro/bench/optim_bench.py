"""PolyStep vs CMA-ES vs OpenAI-ES vs random search on Ackley / Rastrigin / Rosenbrock.

    python -m polystep_neuro.bench.optim_bench [--budget 20000] [--dim 10] [--seeds 3]

Every method gets the same evaluation budget and the same random starts (seed s draws the
start uniformly in the function's box and seeds the method).  Reported per function and
method, medians over seeds:

- ``solved``: runs whose best *evaluated* cost reached the target within the budget;
- ``evals to target``: evaluations until the first candidate at or below the target
  (median over the solved runs);
- ``best evaluated``: lowest cost among all evaluated candidates;
- ``f(final x)``: cost of the method's final point (PolyStep's x, the CMA-ES / ES mean, the
  random-search incumbent), one extra evaluation outside the budget.

Hyperparameters were tuned by hand on starts that are not the benchmark's, per function and
per method (PolyStep, OpenAI-ES and one random-search variant get the same cosine-decay
treatment of their radii / sigma).  CMA-ES uses pycma's default population with
sigma0 = box / 3.  This is a low-dimensional benchmark, where CMA-ES is the gold standard;
PolyStep's case is batched forward-only training of large non-differentiable models.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from polystep_neuro.optim import Cosine, PolyStep
from polystep_neuro.optim.baselines import CMAES, OpenAIES, RandomSearch
from polystep_neuro.optim.testfunctions import ackley, rastrigin, rosenbrock

Objective = Callable[[torch.Tensor], torch.Tensor]

# name -> (function, half-width of the start box, target cost)
FUNCTIONS: dict[str, tuple[Objective, float, float]] = {
    "ackley": (ackley, 5.0, 1e-2),
    "rastrigin": (rastrigin, 5.12, 1e-2),
    "rosenbrock": (rosenbrock, 2.048, 1e-2),
}

# PolyStep radii decay on a cosine to 1/1000 of these over the run.
POLYSTEP = {
    "ackley": dict(step=0.3, probe=1.2, epsilon=1.0, momentum=0.5),
    "rastrigin": dict(step=0.3, probe=1.2, epsilon=1.0, momentum=0.5),
    "rosenbrock": dict(step=0.1, probe=0.1, epsilon=0.3, momentum=0.9),
}
# OpenAI-ES: population, sigma and Adam learning rate (cosine decay to 1/1000).
OPENAI_ES = {
    "ackley": dict(popsize=20, sigma=1.0, lr=0.05),
    "rastrigin": dict(popsize=20, sigma=1.0, lr=0.05),
    "rosenbrock": dict(popsize=20, sigma=0.1, lr=0.05),
}
# Random search: best fixed sigma of the grid 0.01 ... 1.0, and a cosine-decayed sigma.
RANDOM_SIGMA = {"ackley": 0.3, "rastrigin": 1.0, "rosenbrock": 0.01}
RANDOM_COSINE_SIGMA = {"ackley": 1.0, "rastrigin": 1.0, "rosenbrock": 0.1}
RANDOM_POPSIZE = 20


@dataclass
class RunResult:
    evals_to_target: int | None
    best_evaluated: float
    final_cost: float
    seconds: float


def _cosine(value: float, steps: int) -> Cosine:
    return Cosine(value, value * 1e-3, max(steps, 1))


def make_optimizer(method: str, fname: str, x0: torch.Tensor, budget: int, seed: int):
    """Build one optimiser with the ask/tell shape; ``budget`` sizes the schedules."""
    _, box, _ = FUNCTIONS[fname]
    dim = x0.numel()
    if method == "PolyStep":
        cfg = POLYSTEP[fname]
        steps = budget // (2 * dim)  # orthoplex, block_dim 2: N = 2 * dim candidates
        return PolyStep(
            x0,
            step_radius=_cosine(cfg["step"], steps),
            probe_radius=_cosine(cfg["probe"], steps),
            epsilon=cfg["epsilon"],
            momentum=cfg["momentum"],
            seed=seed,
        )
    if method == "CMA-ES":
        popsize = 4 + int(3 * math.log(dim))  # pycma's default
        return CMAES(x0, sigma=box / 3, popsize=popsize, seed=seed)
    if method == "OpenAI-ES":
        cfg = OPENAI_ES[fname]
        steps = budget // cfg["popsize"]
        return OpenAIES(
            x0,
            sigma=_cosine(cfg["sigma"], steps),
            lr=_cosine(cfg["lr"], steps),
            popsize=cfg["popsize"],
            seed=seed,
        )
    if method == "random (fixed sigma)":
        return RandomSearch(x0, sigma=RANDOM_SIGMA[fname], popsize=RANDOM_POPSIZE, seed=seed)
    if method == "random (cosine sigma)":
        steps = budget // RANDOM_POPSIZE
        sigma = _cosine(RANDOM_COSINE_SIGMA[fname], steps)
        return RandomSearch(x0, sigma=sigma, popsize=RANDOM_POPSIZE, seed=seed)
    raise ValueError(f"unknown method {method!r}")


METHODS = (
    "PolyStep",
    "CMA-ES",
    "OpenAI-ES",
    "random (fixed sigma)",
    "random (cosine sigma)",
)


def run(method: str, fname: str, dim: int, budget: int, seed: int) -> RunResult:
    f, box, target = FUNCTIONS[fname]
    gen = torch.Generator().manual_seed(1000 + seed)  # starts differ from the tuning starts
    x0 = (torch.rand(dim, generator=gen, dtype=torch.float64) * 2 - 1) * box
    opt = make_optimizer(method, fname, x0, budget, seed)
    evals, best, hit = 0, math.inf, None
    start = time.perf_counter()
    while evals + opt.num_candidates <= budget:
        costs = f(opt.ask())
        opt.tell(costs)
        if hit is None:
            below = torch.nonzero(costs <= target)
            if below.numel():
                hit = evals + int(below[0, 0]) + 1
        evals += costs.numel()
        best = min(best, float(costs.min()))
    seconds = time.perf_counter() - start
    return RunResult(hit, best, float(f(opt.x)), seconds)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=20000, help="evaluations per run")
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation

    print(
        f"# Optimiser benchmark: {args.dim}-D, budget {args.budget} evaluations, "
        f"{args.seeds} seeds (medians)\n"
    )
    print(
        "| function (target) | method | solved | evals to target | best evaluated "
        "| f(final x) | s/run |"
    )
    print("|---|---|---|---|---|---|---|")
    total = time.perf_counter()
    for fname in args.functions:
        target = FUNCTIONS[fname][2]
        for method in args.methods:
            results = [run(method, fname, args.dim, args.budget, s) for s in range(args.seeds)]
            hits = [r.evals_to_target for r in results if r.evals_to_target is not None]
            to_target = f"{statistics.median(hits):.0f}" if hits else "-"
            print(
                f"| {fname} ({target:g}) | {method} | {len(hits)}/{len(results)} | {to_target} "
                f"| {_fmt(statistics.median(r.best_evaluated for r in results))} "
                f"| {_fmt(statistics.median(r.final_cost for r in results))} "
                f"| {statistics.mean(r.seconds for r in results):.2f} |",
                flush=True,
            )
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
