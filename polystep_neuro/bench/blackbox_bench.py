"""PolyStep on black boxes of your own: every optimiser told one scale, at equal evaluations.

    python -m polystep_neuro.bench.blackbox_bench [--problems NAME ...] [--seeds 0 1 2]
        [--methods ...]

A user who optimises something that is not a spiking network (the ask/tell loop of
``polystep_neuro.optim``) knows one thing about it: a sensible probe distance, the *unit*.
Every method here is given that and nothing else, the way the adaptation recipe gives
every method one probe unit: PolyStep through :meth:`PolyStep.for_units` with the recipe's
defaults and ``unit``, OpenAI-ES with sigma one unit and Adam steps of 0.1 unit (the
recipe's ``lr``), sep-CMA-ES with an initial sigma of one unit, SPSA with gains of one unit
(each move clipped to one unit, Spall's stability constant a tenth of its steps).  The
populations are PolyStep's candidates per step.  ``polystep-class`` is ``PolyStep(x0)``
with the class's own defaults (absolute radii 0.1 / 0.2, no scale given), what a user who
skips the recipe gets.

The problems are polystep_neuro.bench.blackbox_problems's; PolyStep's standalone defaults
may be chosen on the ``tuned`` ones only.  Reported: the median over seeds of each
method's score (noise-free cost, or test loss) at the end of the budget, PolyStep's over
the best baseline's, and seconds per run (CPU, one torch thread).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python polystep_neuro/bench/blackbox_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.bench.blackbox_problems import HELD_OUT, PROBLEMS, TUNED, Problem  # noqa: E402
from polystep_neuro.bench.machine import describe  # noqa: E402
from polystep_neuro.optim import OpenAIES, PolyStep, SepCMAES  # noqa: E402
from polystep_neuro.optim.base import AskTellOptimizer  # noqa: E402
from polystep_neuro.optim.baselines import SPSA  # noqa: E402

METHODS = ("polystep", "polystep-class", "sep-cma", "openai-es", "spsa")
BASELINES = ("sep-cma", "openai-es", "spsa")
OPENAI_ES_LR = 0.1  # the recipe's Adam step, in units


def population(problem: Problem) -> int:
    """PolyStep's candidates per step with the recipe's defaults: every method's population."""
    return PolyStep.candidates_for(problem.sizes, rank=PolyStep.RECIPE["rank"])


def build(method: str, problem: Problem, seed: int) -> AskTellOptimizer:
    """``method`` on ``problem`` told only its unit (module docstring)."""
    x0, unit, pop = problem.x0, problem.unit, population(problem)
    if method == "polystep":
        steps = problem.evaluations // pop
        return PolyStep.for_units(x0, sizes=problem.sizes, total_steps=steps, seed=seed,
                                  unit=unit)  # fmt: skip
    if method == "polystep-class":
        return PolyStep(x0, seed=seed)
    if method == "openai-es":
        return OpenAIES(x0, sigma=unit, lr=OPENAI_ES_LR * unit, popsize=pop + pop % 2, seed=seed)
    if method == "sep-cma":
        return SepCMAES(x0, sigma=unit, popsize=pop, seed=seed)
    if method == "spsa":
        steps = problem.evaluations // 2
        return SPSA(x0, a=unit, c=unit, A=0.1 * steps, seed=seed, max_step=unit)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(method: str, problem: Problem, seed: int) -> tuple[float, float]:
    """(score at the end of the budget, seconds) of one run."""
    opt = build(method, problem, seed)
    used, start = 0, time.perf_counter()
    while used + opt.num_candidates <= problem.evaluations:
        candidates = opt.ask()
        used += candidates.shape[0]
        opt.tell(problem.cost(candidates))
    seconds = time.perf_counter() - start
    score = problem.score(opt.x)
    return (score if math.isfinite(score) else math.inf), seconds


def run(
    names: list[str], seeds: list[int], methods: list[str], say: Callable[[str], None]
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Every method on every problem and seed: ``{(problem, method): [(score, s), ...]}``."""
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in names:
        for seed in seeds:
            for method in methods:  # each its own copy: the same noise and minibatches
                score, seconds = run_one(method, PROBLEMS[name](seed), seed)
                say(f"{name}, seed {seed}, {method}: {score:.4g} ({seconds:.1f} s)")
                results.setdefault((name, method), []).append((score, seconds))
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def tables(
    problems: dict[str, Problem],
    methods: list[str],
    results: dict[tuple[str, str], list[tuple[float, float]]],
) -> list[str]:
    """The per-problem table (``problems``: one built copy of each, for what it is) and the
    count of problems where PolyStep is at or below the best baseline, per half."""
    baselines = [m for m in methods if m in BASELINES]
    lines = [
        "| problem | half | what | parameters | evaluations | "
        + " | ".join(methods) + " | PolyStep / best baseline |",
        "|---|---|---|---:|---:|" + "---:|" * len(methods) + "---:|",
    ]  # fmt: skip
    wins: dict[str, list[tuple[bool, bool]]] = {TUNED: [], HELD_OUT: []}
    for name, problem in problems.items():
        med = {m: _median([s for s, _ in results.get((name, m), [])]) for m in methods}
        secs = {m: _median([t for _, t in results.get((name, m), [])]) for m in methods}
        cells = [f"{med[m]:.4g} ({secs[m]:.1f} s)" for m in methods]
        ratio = "-"
        if "polystep" in med and baselines:
            best = min(med[m] for m in baselines)
            ratio = f"{med['polystep'] / best:.2f}x" if best > 0 else "-"
            solved = problem.solved is not None and max(med["polystep"], best) <= problem.solved
            if solved:  # both found the global minimum; the ratio is only precision
                ratio = f"both <= {problem.solved:g} (solved)"
            wins[problem.half].append((med["polystep"] <= best, solved))
        lines.append(
            f"| {name} | {problem.half} | {problem.what} | {sum(problem.sizes):,} "
            f"| {problem.evaluations:,} | " + " | ".join(cells) + f" | {ratio} |"
        )
    lines += ["", "| half | PolyStep <= best baseline | or both solved |", "|---|---:|---:|"]
    for half, won in wins.items():
        if won:
            either = sum(w or s for w, s in won)
            lines.append(f"| {half} | {sum(w for w, _ in won)} of {len(won)} "
                         f"| {either} of {len(won)} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--half", choices=(TUNED, HELD_OUT), help="only this half's problems")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    built = {n: PROBLEMS[n](args.seeds[0]) for n in args.problems}  # for their half and size
    problems = {n: p for n, p in built.items() if not args.half or p.half == args.half}
    print(f"{describe(gpu=False)}; medians over seeds {', '.join(map(str, args.seeds))}",
          flush=True)  # fmt: skip
    results = run(list(problems), args.seeds, args.methods, lambda s: print(s, flush=True))
    print("\n".join(["", *tables(problems, args.methods, results)]))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
