"""The adaptation loop: progress log, checkpoints, bit-identical resume, Ctrl-C."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from devices.registry import open_backend
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.run.controller import CHECKPOINT_NAME, METRICS_NAME, SPEC_NAME, Adapter
from polystep_neuro.run.data import SpikeDataset, load_digits_split, rate_encode
from polystep_neuro.run.loop_options import Output, Regularization, Scoring
from polystep_neuro.run.losses import make_loss
from polystep_neuro.run.optimizers import OPTIMIZERS, Settings
from polystep_neuro.run.params import ParamVector

T = 12


@pytest.fixture(scope="module")
def data() -> tuple[SpikeDataset, SpikeDataset]:
    split = load_digits_split(0)
    train = SpikeDataset(rate_encode(split.x_train[:400], T), split.y_train[:400], 64, seed=0)
    test = SpikeDataset(rate_encode(split.x_test[:100], T), split.y_test[:100], 100)
    return train, test


def _adapter(data, out_dir, precision="float32", **kw) -> Adapter:
    spec = NetworkSpec.random([64, 32, 10], T, seed=0, writable=("fc1.weight", "lif0.vth"))
    backend = open_backend(
        "torch-sim" if precision == "float32" else "torch-sim-fixed", device="cpu"
    )
    backend.load(spec)
    layout = ParamVector(spec)
    opt = PolyStep(
        layout.flatten(spec),
        step_radius=0.5,
        probe_radius=1.0,
        epsilon=0.3,
        seed=3,
        subspace=Subspace(sizes=layout.sizes, rank=32, absorb_interval=4),
        momentum=0.5,
    )
    return Adapter(
        backend.spec,
        backend,
        opt,
        make_loss("ce", T, scale=0.5),
        data[0],
        scoring=Scoring(test={"monitor": data[1]}, every=2),
        output=Output(out_dir, checkpoint_every=3, progress=False),
        **kw,
    )


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_interrupt_and_resume_is_bit_identical(data, tmp_path, precision) -> None:
    whole = _adapter(data, tmp_path / "whole", precision)
    ref = whole.run(10)
    assert not ref.interrupted and ref.steps == 10

    def stop_at_4(adapter: Adapter, record: dict) -> None:
        if record["step"] == 4:
            adapter.request_stop()

    first = _adapter(data, tmp_path / "split", precision, on_step=stop_at_4)
    part = first.run(10)
    assert part.interrupted and part.steps == 4
    assert (tmp_path / "split" / CHECKPOINT_NAME).exists()

    second = _adapter(data, tmp_path / "split", precision)  # a fresh optimiser and backend
    assert second.resume() == 4
    final = second.run(10)
    # The resumed run reports the stage's whole wall time, the interrupted part included.
    assert final.wall_seconds >= part.wall_seconds > 0
    assert np.array_equal(final.spec.layers[1].weight, ref.spec.layers[1].weight)
    assert torch.equal(second.optimizer.x, whole.optimizer.x)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / METRICS_NAME).read_text().splitlines()
    ]
    assert steps == list(range(0, 11))  # the start (step 0), no duplicates, no gaps
    saved = NetworkSpec.load(tmp_path / "split" / SPEC_NAME)
    assert np.array_equal(saved.layers[1].weight, ref.spec.layers[1].weight)
    assert saved.layers[0].vth == ref.spec.layers[0].vth


def test_resume_from_an_older_checkpoint_drops_later_log_lines(data, tmp_path) -> None:
    adapter = _adapter(data, tmp_path)
    adapter.run(6)  # checkpoints at 3 and 6
    log = tmp_path / METRICS_NAME
    assert len(log.read_text().splitlines()) == 7  # the start and six steps
    adapter.checkpoint_every = 0
    fresh = _adapter(data, tmp_path)
    assert fresh.resume() == 6
    fresh.run(8)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(0, 9))


def test_metrics_and_learning(data, tmp_path) -> None:
    adapter = _adapter(data, tmp_path)
    result = adapter.run(60)
    first, last = result.history[0], result.history[-1]
    # measured: monitor loss 2.2 -> 1.6, accuracy 10% -> 45% (10 classes: chance is 10%)
    assert first["step"] == 0 and last["step"] == 60
    assert last["monitor_loss"] < first["monitor_loss"] - 0.3
    assert last["monitor_accuracy"] > 0.3
    assert result.start["monitor_accuracy"] == first["monitor_accuracy"]
    assert result.end["monitor_accuracy"] == last["monitor_accuracy"]
    stepped = result.history[1:]
    assert result.evaluations == sum(r["candidates"] for r in stepped) * 64
    assert {"loss_min", "loss_mean", "step_seconds", "evaluations"} <= set(last)


def test_bad_setups_fail_with_messages(data, tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(PolystepError, match="not writable"):
        _adapter(data, blocked / "sub")
    adapter = _adapter(data, tmp_path / "a")
    with pytest.raises(PolystepError, match="no checkpoint to resume from"):
        adapter.resume()
    (tmp_path / "a" / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(PolystepError, match="cannot read checkpoint"):
        adapter.resume()


# --------------------------------------------------------------------- safe adaptation
def _build(data, out_dir=None, optimizer="polystep", steps=12, **kw) -> Adapter:
    """The recipe (Adapter.build) on a fixed-point backend, validated on ``data[1]``."""
    spec = NetworkSpec.random([64, 32, 10], T, seed=0, writable=("fc1.weight", "lif1.v_bias"))
    backend = open_backend("torch-sim-fixed", device="cpu")
    backend.load(spec)
    options = dict(
        validation={"val": data[1]}, test={"clean": data[1]}, eval_every=3, progress=False
    )
    options.update(kw)
    return Adapter.build(
        backend,
        data[0],
        steps=steps,
        settings=Settings(optimizer=optimizer, seed=1, rank=16),
        out_dir=out_dir,
        **options,
    )


def test_a_run_where_every_step_hurts_hands_back_the_start_and_says_so(data) -> None:
    lines: list[str] = []
    adapter = _build(data, report=lines.append)
    start = adapter.layout.to_spec(adapter.spec, adapter.optimizer.x)
    tell = adapter.optimizer.tell
    adapter.optimizer.tell = lambda costs: tell(-costs)  # an optimiser that climbs the loss
    result = adapter.run(12)
    # The optimiser climbed the loss (it moved), but nothing it found beat the start.
    assert not torch.equal(adapter.optimizer.x, adapter.x0)
    assert result.history[-1]["val_loss"] > result.start["val_loss"]
    assert result.kept_start and result.best_step == 0
    for name, value in result.spec.parameters().items():
        assert np.array_equal(value, start.parameters()[name]), name
    assert result.end == result.start
    assert lines == [result.summary()]
    assert lines[0].startswith("no step beat the starting network on validation in 12 steps")
    assert "clean test" in lines[0]  # held-out accuracy is reported even then


def test_what_is_handed_back_is_never_less_accurate_on_validation(data, tmp_path) -> None:
    adapter = _build(data, out_dir=tmp_path, steps=30)
    result = adapter.run(30)
    scored = [r for r in result.history if "val_accuracy" in r]
    assert scored[0]["step"] == 0 and len(scored) == 11  # start, every 3 steps, the last
    assert result.end["val_accuracy"] >= result.start["val_accuracy"]
    # The pick: the last point when it is at least as accurate as the start (measured: it is
    # here), else the lowest validation loss among the points that are.
    eligible = [r for r in scored if r["val_accuracy"] >= result.start["val_accuracy"]]
    best = scored[-1] if scored[-1] in eligible else min(eligible, key=lambda r: r["val_loss"])
    assert best["step"] == 30
    assert result.best_step == best["step"]
    assert result.end["val_loss"] == pytest.approx(best["val_loss"])
    assert "clean_accuracy" in result.start and "clean_accuracy" in result.end
    # The saved network is the one handed back, and the summary says which step it is.
    saved = NetworkSpec.load(tmp_path / SPEC_NAME)
    assert np.array_equal(saved.layers[1].weight, result.spec.layers[1].weight)
    assert f"network of step {best['step']} of 30" in result.summary()


def test_a_run_that_ends_worse_than_it_began_hands_back_its_best_point(data) -> None:
    adapter = _build(data, steps=24)
    tell, climbing = adapter.optimizer.tell, {"on": False}
    adapter.optimizer.tell = lambda c: tell(-c if climbing["on"] else c)

    def turn_at_12(_: Adapter, record: dict) -> None:
        climbing["on"] = record["step"] >= 12  # descend 12 steps, then climb 12

    adapter.on_step = turn_at_12
    result = adapter.run(24)
    scored = {r["step"]: r for r in result.history if "val_accuracy" in r}
    start = result.start["val_accuracy"]
    assert scored[24]["val_accuracy"] < start  # the last point is worse than the start
    eligible = [r for r in scored.values() if r["val_accuracy"] >= start]
    best = min(eligible, key=lambda r: r["val_loss"])
    assert 0 < result.best_step == best["step"] < 24 and not result.kept_start
    assert result.end["val_accuracy"] >= start
    assert f"network of step {best['step']} of 24" in result.summary()


def test_anchor_rides_along_as_one_more_parameter_set(data) -> None:
    free = _build(data, validation=None, test=None).run(5)
    anchored = _build(data, validation=None, test=None, anchor_weight=1.0).run(5)
    per_step = free.history[1]["candidates"]
    assert anchored.history[1]["candidates"] == per_step + 1
    assert anchored.evaluations == 5 * (per_step + 1) * 64
    # The distillation term is >= 0 and adds to every candidate's cost.
    assert anchored.history[1]["loss_min"] > free.history[1]["loss_min"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_runs_through_the_adapter_and_resumes_exactly(
    data, tmp_path, optimizer
) -> None:
    whole = _build(data, tmp_path / "whole", optimizer, steps=8)
    ref = whole.run(8)
    assert ref.steps == 8 and not torch.equal(whole.optimizer.x, whole.x0)

    def stop_at_3(adapter: Adapter, record: dict) -> None:
        if record["step"] == 3:
            adapter.request_stop()

    first = _build(data, tmp_path / "split", optimizer, steps=8, on_step=stop_at_3)
    assert first.run(8).steps == 3
    second = _build(data, tmp_path / "split", optimizer, steps=8)
    assert second.resume() == 3
    second.run(8)
    assert torch.equal(second.optimizer.x, whole.optimizer.x), optimizer


def test_resume_with_another_optimizer_is_refused(data, tmp_path) -> None:
    _build(data, tmp_path, "openai-es", steps=3).run(3)
    other = _build(data, tmp_path, "spsa", steps=3)
    with pytest.raises(PolystepError, match="different optimiser"):
        other.resume()


def test_the_flat_keywords_of_the_constructor_still_work_with_a_warning(data) -> None:
    spec = NetworkSpec.random([64, 32, 10], T, seed=0, writable=("fc1.weight",))
    backend = open_backend("torch-sim", device="cpu")
    backend.load(spec)
    layout = ParamVector(spec)
    opt = PolyStep(layout.flatten(spec), step_radius=0.5, probe_radius=1.0, seed=3)
    loss = make_loss("ce", T, scale=0.5)
    with pytest.warns(DeprecationWarning, match=r"Adapter\(monitor=, anchor_weight=, progress="):
        old = Adapter(spec, backend, opt, loss, data[0], monitor=data[1], anchor_weight=1.0,
                      progress=False)  # fmt: skip
    assert old.scoring == Scoring(test={"monitor": data[1]})
    assert old.regularization == Regularization(anchor_weight=1.0)
    assert old.output == Output(progress=False)
    with pytest.raises(PolystepError, match="anchor_weight must be >= 0, got -1"):
        Adapter.build(backend, data[0], steps=1, anchor_weight=-1)
    with pytest.raises(TypeError, match="unknown option"):
        Adapter.build(backend, data[0], steps=1, eval_evry=3)
    with pytest.warns(DeprecationWarning, match="Adapter.build: device= is now torch_device="):
        Adapter.build(backend, data[0], steps=1, device="cpu")


def test_a_busy_machine_with_torch_threads_gets_one_hint(monkeypatch, capsys) -> None:
    """torch's threads on a machine already as busy as it has cores wait for each other (a
    new user's demo slowed from minutes to an estimated two hours with no word why): the
    bar says once what to do; a quiet machine or one thread says nothing."""
    from polystep_neuro.run import progress

    monkeypatch.setattr(progress.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    with progress.ProgressBar(10, 0, "adapt", enabled=True):
        pass
    err = capsys.readouterr()
    said = err.out + err.err
    assert "the machine is busy (load 3.5 on 2 cores) and torch runs 2 threads" in said
    assert "OMP_NUM_THREADS=1 and --resume" in said
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert progress.busy_machine_hint() is None
    monkeypatch.setattr(progress.os, "getloadavg", lambda: (3.5, 3.0, 2.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert progress.busy_machine_hint() is None
    with progress.ProgressBar(10, 0, "adapt", enabled=False):  # no bar, no hint
        pass
    assert "busy" not in "".join(capsys.readouterr())


def test_progress_into_a_log_file_is_plain_lines(capsys) -> None:
    """stderr redirected to a file got one carriage-return bar update per step (a 300-step
    run's log was one unreadable line): off a terminal the bar writes a line per tenth of
    the run, with the loss, validation accuracy and time."""
    from polystep_neuro.run import progress

    with progress.ProgressBar(20, 0, "adapt", enabled=True) as bar:
        for step in range(20):
            bar.update({"loss_min": 1.0 / (step + 1), "val_accuracy": 0.5})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adapt: step")]
    assert "\r" not in err
    steps = [line.split(",")[0] for line in lines]
    assert steps == [f"adapt: step {n}/20" for n in range(2, 21, 2)]
    assert lines[-1].startswith("adapt: step 20/20, loss 0.050, val 50.0%, ")
    assert lines[-1].endswith(" s this run")  # done: nothing left to estimate
    # before the end, the time left at this run's pace (a 40-step run said only how long it
    # had run for 7 minutes)
    assert all(re.search(r" s this run, about \d+ s left$", line) for line in lines[:-1])


def test_the_time_left_reads_in_the_unit_a_person_uses() -> None:
    from polystep_neuro.run.progress import _duration

    assert [_duration(s) for s in (45, 89.4, 700, 5300, 9000)] == [
        "45 s", "89 s", "12 min", "88 min", "2.5 h"
    ]  # fmt: skip


def test_the_summary_says_why_that_step_is_handed_back() -> None:
    """The end is preferred while it holds up on validation, so an earlier step with a higher
    validation accuracy is not what comes back: the line says which rule chose."""
    from polystep_neuro.run.controller import AdaptResult

    def result(best: int, end: dict[str, float]) -> AdaptResult:
        return AdaptResult(spec=None, steps=20, evaluations=0, interrupted=False,  # type: ignore[arg-type]
                           wall_seconds=0.0, history=[], start={"val_accuracy": 0.8,
                           "val_loss": 0.5}, end=end, best_step=best)  # fmt: skip

    labelled = {"val_accuracy": 0.85, "val_loss": 0.4}
    assert (
        result(20, labelled)
        .summary()
        .startswith(
            "handing back the network of step 20 of 20 (the last step: at least as accurate on "
            "validation as the start); validation 80.0% -> 85.0%"
        )
    )
    assert (
        result(12, labelled)
        .summary()
        .startswith(
            "handing back the network of step 12 of 20 (the last step fell below the start on "
            "validation; of the steps that did not, the one with the lowest validation loss)"
        )
    )
    assert (
        "(the last step: its validation objective beat the start's)"
        in result(20, {"val_loss": 0.4}).summary()
    )
