"""The black-box bench: every optimiser told one scale, at equal evaluations."""

from __future__ import annotations

import re

import pytest
import torch

from polystep_neuro.bench import blackbox_bench, blackbox_problems
from polystep_neuro.bench.blackbox_problems import HELD_OUT, PROBLEMS, TUNED
from polystep_neuro.optim import PolyStep


def test_both_halves_hold_problems_and_each_gives_what_the_bench_needs() -> None:
    halves = {name: build(0).half for name, build in PROBLEMS.items()}
    assert set(halves.values()) == {TUNED, HELD_OUT}
    assert sum(h == HELD_OUT for h in halves.values()) >= sum(h == TUNED for h in halves.values())
    quad = blackbox_problems.PROBLEMS["quad50-noisy"](0)
    assert quad.x0.shape == (50,) and quad.sizes == (50,) and quad.unit == 0.1
    points = torch.zeros(3, 50, dtype=torch.float64)
    costs = quad.cost(points)
    assert costs.shape == (3,) and len(set(costs.tolist())) == 3  # noisy per evaluation
    assert quad.score(torch.zeros(50, dtype=torch.float64)) == pytest.approx(
        float(quad.cost(points).mean()), rel=0.01
    )


def test_the_recipe_beats_the_class_defaults_and_every_method_gets_equal_evaluations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On the noisy quadratic, ``PolyStep(x0)`` (absolute radii, no scale) ends about 50x
    above ``PolyStep.for_units(x0, unit=...)``; the populations are PolyStep's."""
    problem = PROBLEMS["quad50-noisy"](0)
    pop = blackbox_bench.population(problem)
    assert pop == PolyStep.candidates_for((50,), rank=64) == 100
    for method in blackbox_bench.METHODS:
        opt = blackbox_bench.build(method, problem, 0)
        assert opt.num_candidates == (2 if method == "spsa" else pop), method
    argv = ["--problems", "quad50-noisy", "--seeds", "0", "--methods", "polystep"]
    assert blackbox_bench.main([*argv, "polystep-class", "sep-cma"]) == 0
    out = capsys.readouterr().out
    scores = {m: float(s) for m, s in re.findall(r"seed 0, ([\w-]+): ([\d.e+-]+)", out)}
    assert scores["polystep"] < scores["polystep-class"] / 20, scores
    row = next(line for line in out.splitlines() if line.startswith("| quad50-noisy"))
    assert "| tuned |" in row and "20,000" in row and row.endswith("x |")
