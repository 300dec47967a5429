"""The task zoo (bench.adapt_bench --zoo) on its quick sizes: what it covers, equal budgets,
resuming from its results file, and its tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from polystep_neuro.bench import adapt_bench, zoo, zoo_tasks
from polystep_neuro.bench.zoo_tasks import HELD_OUT, TASKS, TUNED


def test_the_zoo_covers_the_networks_users_bring() -> None:
    assert len(TASKS) >= 8 and len({t.name for t in TASKS}) == len(TASKS)
    halves = {half: [t for t in TASKS if t.half == half] for half in (TUNED, HELD_OUT)}
    assert len(halves[TUNED]) == len(halves[HELD_OUT]) == len(TASKS) // 2
    assert {t.net.dataset for t in TASKS} == {"digits", "mnist5k"}
    assert {len(t.net.sizes) - 2 for t in TASKS} == {1, 2}  # hidden layers
    assert {"leaky", "synaptic", "random"} <= {t.net.neuron for t in TASKS}
    assert {t.writable for t in TASKS} == {"readout", "hidden-biases", "every"}
    assert {t.data for t in TASKS} == {"drifted", "replay", "scratch"}
    assert {t.backend for t in TASKS} == {"torch-sim", "torch-sim-fixed"}
    scratch = [t for t in TASKS if t.data == "scratch" and t.net.sizes == (784, 128, 10)]
    assert scratch and scratch[0].writable == "every"
    for half in halves.values():  # each half has drifted-only and replay tasks of its own
        assert {"drifted", "replay", "scratch"} <= {t.data for t in half}


def test_quick_zoo_gives_every_method_the_same_budget(tmp_path: Path) -> None:
    pytest.importorskip("snntorch")
    out = tmp_path / "results.jsonl"
    records = zoo.run(TASKS, [0], zoo.METHODS, [], out, quick=True, progress=lambda s: None)
    assert len(records) == len(TASKS) * len(zoo.METHODS)
    for task in TASKS:
        runs = {r["method"]: r for r in records if r["task"] == task.name}
        budget = runs["polystep"]["budget"]
        assert {r["budget"] for r in runs.values()} == {budget}
        # equal parameter sets per step, but SPSA's two
        assert runs["sep-cma"]["candidates"] == runs["polystep"]["candidates"]
        assert runs["openai-es"]["candidates"] == runs["polystep"]["candidates"] + (
            runs["polystep"]["candidates"] % 2
        )
        assert runs["spsa"]["candidates"] == 2
        for r in runs.values():
            assert [p["fraction"] for p in r["points"]] == list(zoo.FRACTIONS)
            for p in r["points"]:  # scored within one step of the budget's fraction
                assert abs(p["passes"] - p["fraction"] * budget) <= r["candidates"] / 2 + 1
            assert r["cpu_step"] > 0 and r["start"]["clean_accuracy"] >= 0
            # keep-best on validation never hands back less than the start there
            assert r["end"]["val_accuracy"] >= r["start"]["val_accuracy"]
    # the results file resumes: nothing is run twice
    assert zoo.run(TASKS, [0], zoo.METHODS, [], out, quick=True, progress=lambda s: None) == []
    # a variant really runs with its change
    task = zoo_tasks.BY_NAME["digits-leaky-every-replay"]
    (other,) = zoo.run([task], [0], [], ["heavy-ball"], out, quick=True, progress=lambda s: None)
    default = next(r for r in records if r["task"] == task.name and r["method"] == "polystep")
    assert other["variant"] == "heavy-ball" and other["points"] != default["points"]
    lines = zoo.tables(zoo.load([out]), ["default", "heavy-ball"])
    text = "\n".join(lines)
    assert all(f"| {t.name} | {t.half} |" in text for t in TASKS)
    summary = [ln for ln in lines if ln.startswith(("| tuned |", "| held-out |", "| all |"))]
    assert len(summary) == 3 and all(" of 5 (" in ln or " of 10 (" in ln for ln in summary)
    assert any(ln.startswith("| heavy-ball | tuned | 1 |") for ln in lines)


def test_time_per_step_is_measured_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("snntorch")
    task = zoo_tasks.BY_NAME["digits-synaptic2-every-replay"]
    timing = zoo.run_timing([task], tmp_path / "t.json", quick=True, progress=lambda s: None)
    t = timing[task.name]
    assert set(t) == set(zoo.METHODS)
    assert all(v["cpu"] > 0 and v["wall"] > 0 for v in t.values())
    # OpenAI-ES's sets differ everywhere, and so do PolyStep's now that one subspace spans
    # every tensor: each of the 3 layers runs once per set for both.
    assert t["openai-es"]["layer_sets"] == 3 * t["openai-es"]["candidates"]
    assert t["polystep"]["layer_sets"] == 3 * t["polystep"]["candidates"]
    assert zoo.load_timing(tmp_path / "t.json") == timing
    (row,) = [ln for ln in zoo.time_table(timing) if ln.startswith(f"| {task.name} |")]
    assert f"{t['openai-es']['layer_sets']:,} / {t['polystep']['layer_sets']:,} = " in row


def test_adapt_bench_forwards_zoo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    task = "mnist-leaky-readout-drifted"
    args = ["--zoo", "--quick", "--seeds", "0", "--tasks", task, "--methods", "polystep"]
    assert adapt_bench.main([*args, "--out", str(out)]) == 0
    assert f"| {task} | tuned |" in capsys.readouterr().out
    assert [r["task"] for r in zoo.load([out])] == [task]


def test_zoo_runs_shipped_polystep_for_variant_default_and_refuses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    task = "mnist-leaky-readout-drifted"
    args = ["--quick", "--seeds", "0", "--tasks", task, "--out", str(out)]
    assert zoo.main([*args, "--methods", "--variants", "default"]) == 0
    assert [(r["method"], r["variant"]) for r in zoo.load([out])] == [("polystep", "default")]
    with pytest.raises(SystemExit) as stop:
        zoo.main([*args, "--methods"])
    assert stop.value.code == 2
    assert "nothing to run: name --methods, --variants" in capsys.readouterr().err
