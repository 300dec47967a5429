"""PolyStep on classic 10-D test functions vs an honest random-search baseline.

Each run uses a fixed start and seed and a fixed evaluation budget, so the numbers are
deterministic on a given machine; thresholds leave a wide margin.  ``pytest -s`` prints the
measured values.

Random-search baseline: Gaussian perturbations of the best point seen so far with a fixed
sigma, same number of evaluations and batch size.  Sigma is the best of a grid
(0.01 ... 1.0), i.e. the baseline is tuned on the very run it is compared on.
"""

from __future__ import annotations

import pytest
import torch

from polystep_neuro.optim import Cosine, PolyStep
from polystep_neuro.optim.baselines import RandomSearch
from polystep_neuro.optim.testfunctions import ackley, rastrigin, rosenbrock, staircase

DIM = 10
STEPS = 1000  # x 20 candidates per step (5 blocks x 4 orthoplex vertices) = 20,000 evaluations
SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: OpenMP only adds barrier waits (ms each on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _start(box: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(DIM, generator=gen, dtype=torch.float64) * 2 - 1) * box


def _polystep(f, x0, *, step, probe, epsilon, momentum) -> tuple[float, int]:
    """Final cost f(opt.x) and the evaluations used (the final check counts as one)."""
    opt = PolyStep(
        x0,
        step_radius=Cosine(step, step * 1e-3, STEPS),
        probe_radius=Cosine(probe, probe * 1e-3, STEPS),
        epsilon=epsilon,
        momentum=momentum,
        seed=0,
    )
    for _ in range(STEPS):
        opt.step(f)
    return float(f(opt.x)), STEPS * opt.num_candidates + 1


def _random_search(f, x0, evaluations: int) -> tuple[float, float]:
    """Best cost over the sigma grid (and the sigma that reached it), same budget."""
    results = []
    for sigma in SIGMAS:
        rs = RandomSearch(x0, sigma=sigma, popsize=20, seed=0)
        for _ in range(evaluations // 20):
            rs.tell(f(rs.ask()))
        results.append((rs.best_cost, sigma))
    return min(results)


# (function, box of the random start, PolyStep settings, threshold, factor over random search)
# Multimodal functions need a probe radius well above the step radius (probes look over the
# local bumps); Rosenbrock's curved valley needs small radii and momentum.
CASES = {
    "ackley": (ackley, 5.0, dict(step=0.3, probe=1.2, epsilon=1.0, momentum=0.5), 1e-2, 10.0),
    "rastrigin": (rastrigin, 5.12, dict(step=0.3, probe=1.2, epsilon=1.0, momentum=0.5), 3.0, 10.0),
    "rosenbrock": (
        rosenbrock,
        2.048,
        dict(step=0.1, probe=0.1, epsilon=0.3, momentum=0.9),
        1e-2,
        10.0,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_polystep_reaches_threshold_and_beats_random_search(name: str) -> None:
    f, box, settings, threshold, factor = CASES[name]
    x0 = _start(box)
    start_cost = float(f(x0))
    cost, evaluations = _polystep(f, x0, **settings)
    rs_cost, rs_sigma = _random_search(f, x0, evaluations - 1)
    print(
        f"\n{name}: start {start_cost:.4g}; PolyStep {cost:.4g} after {evaluations} evals; "
        f"random search {rs_cost:.4g} (best sigma {rs_sigma}); "
        f"ratio {rs_cost / max(cost, 1e-12):.3g}"
    )
    assert cost < threshold, f"PolyStep reached {cost:.4g}, threshold {threshold}"
    assert cost * factor < rs_cost, f"PolyStep {cost:.4g} not {factor}x better than {rs_cost:.4g}"


def test_staircase_objective_without_gradient() -> None:
    """floor(||x||^2) has zero gradient almost everywhere; PolyStep still descends it."""
    x0 = _start(5.0, seed=7)
    start = float(staircase(x0))
    x0.requires_grad_(True)
    staircase(x0).backward()
    assert torch.count_nonzero(x0.grad) == 0  # a gradient method would not move at all
    opt = PolyStep(x0.detach(), step_radius=0.2, probe_radius=0.4, epsilon=0.3, seed=0)
    for _ in range(300):  # 6,000 evaluations
        opt.step(staircase)
    final = float(staircase(opt.x))
    print(f"\nstaircase: {start:.0f} -> {final:.0f} after {300 * opt.num_candidates} evals")
    assert start >= 50
    assert final <= 0.05 * start, f"staircase only went from {start} to {final}"
