"""Models built with snnTorch's defaults reach the device and come back: subtract reset,
``reset_delay=True``, a bias on every ``nn.Linear``, ``snn.Synaptic`` hidden layers, three
layers, time-first ``spikegen`` data — through convert -> check -> deploy -> evaluate ->
load_into, from the command line and from the API."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.cli import main
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import hold_out, load_digits_split
from polystep_neuro.run.interop.snntorch import run_snntorch, snntorch_spec
from polystep_neuro.run.losses import decisions
from polystep_neuro.run.reference import as_reference

snn = pytest.importorskip("snntorch")
from snntorch import spikegen  # noqa: E402
from snntorch import utils as snn_utils  # noqa: E402

T = 8


def _model(hidden: str) -> torch.nn.Sequential:
    torch.manual_seed(0)
    grad = functools.partial(snn.surrogate.ATan.apply, alpha=2.0)  # = snnTorch's default
    if hidden == "synaptic":

        def neuron() -> torch.nn.Module:
            return snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=grad, init_hidden=True)
    else:

        def neuron() -> torch.nn.Module:
            return snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True)

    return torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        neuron(),
        torch.nn.Linear(32, 24),
        neuron(),
        torch.nn.Linear(24, 10),
        snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, output=True),
    )


@pytest.fixture(scope="module", params=["synaptic", "leaky"])
def trained(request) -> dict:
    """A three-layer default model trained with BPTT on time-first spikegen digits."""
    split = load_digits_split(0)
    kept, held = hold_out(len(split.y_train), 0.25, 0)
    torch.manual_seed(1)

    def rate(x: np.ndarray) -> np.ndarray:  # (T, n, 64), as snnTorch's spikegen makes it
        return spikegen.rate(torch.as_tensor(x), num_steps=T).to(torch.uint8).numpy()

    data = {
        "train": (rate(split.x_train[kept]), split.y_train[kept]),
        "val": (rate(split.x_train[held]), split.y_train[held]),
        "test": (rate(split.x_test), split.y_test),
    }
    model = _model(request.param)
    xs, ys = (
        torch.as_tensor(data["train"][0], dtype=torch.float32),
        torch.as_tensor(data["train"][1]),
    )
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(4):
        for first in range(0, len(ys), 64):
            snn_utils.reset(model)
            counts = sum(model(xs[t, first : first + 64])[0] for t in range(T))
            loss = torch.nn.functional.cross_entropy(counts * 0.5, ys[first : first + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"model": model, "data": data, "hidden": request.param}


def _accuracy(counts: np.ndarray, labels: np.ndarray) -> float:
    counts = np.asarray(counts)
    top = counts[np.arange(len(labels)), labels]
    others = counts.copy()
    others[np.arange(len(labels)), labels] = -1
    return float(np.mean(top > others.max(axis=1)))


def test_the_api_deploys_checks_and_hands_back(trained: dict) -> None:
    model, data = trained["model"], trained["data"]
    spec, notes = snntorch_spec(model, T)
    assert notes == []  # scalar values: read exactly
    assert [(layer.reset, layer.reset_delay, layer.delay) for layer in spec.layers] == [
        ("subtract", True, 0)
    ] * 3
    assert all(layer.bias is not None for layer in spec.layers)
    trained_acc = _accuracy(
        run_snntorch(model, data["test"][0].transpose(1, 0, 2)), data["test"][1]
    )
    assert trained_acc > 0.6

    report = pn.check(model, "torch-sim-fixed", *data["val"], time_steps=T, time_first=True)
    assert report.first_divergence == 0 and len(report.layers) == 3
    assert report.reference_accuracy > 0.6
    ref_counts = torch.as_tensor(run_snntorch(model, data["val"][0].transpose(1, 0, 2)))
    assert report.reference_ties == pytest.approx(float((decisions(ref_counts) < 0).float().mean()))
    assert (
        f"ties for the top output count (no decision, counted wrong): reference "
        f"{report.reference_ties:.1%}, torch-sim-fixed {report.device_ties:.1%}" in report.summary()
    )

    result = pn.deploy(
        model, "torch-sim-fixed", data=data["train"], validation=data["val"],
        test={"test": data["test"]}, time_steps=T, time_first=True, budget=6000,
        adapt=True, progress=False,
    )  # fmt: skip
    assert result.after["val_accuracy"] >= result.before["val_accuracy"]  # never worse
    # the calibration: 13 x 13 candidates x 4 minibatches of 128 per layer; PolyStep the rest
    assert result.parameter_sets <= 6000 and result.result.steps >= 1
    assert [c.layer for c in result.calibration] in ([0, 1, 2], [])
    assert result.reference["test_accuracy"] == pytest.approx(trained_acc)
    assert [layer.delay for layer in result.spec.layers] == [1, 1, 1]
    assert all(layer.bias is None for layer in result.spec.layers)  # folded for Lava
    approximate = [c for c in result.changes if c.endswith("[approximate]")]
    assert len(approximate) == 9 + (3 if trained["hidden"] == "synaptic" else 1) - 1
    assert "recovered" in result.summary() and "of the gap closed" in result.summary()
    assert not result.model_labelled_val and "own answers" not in result.summary()

    # evaluate: the network handed back scores as deploy said, on the device's arithmetic
    with pn_backend() as backend:
        backend.load(result.spec)
        counts = backend.evaluate({}, data["test"][0].transpose(1, 0, 2))[0].numpy()
    assert _accuracy(counts, data["test"][1]) == pytest.approx(result.after["test_accuracy"])

    # load_into: the recovered weights in the user's own module; converted again, the module
    # is the recovered device network (the Synaptic biases come back through the same factor)
    # (with output copies kept, the module gets the first copy of each: one neuron a class)
    mine = _model(trained["hidden"])
    handed = result.spec.first_output_copy()
    if result.output_copies > 1:
        with pytest.warns(UserWarning, match="gets the first copy of each"):
            result.load_into(mine)
    else:
        result.load_into(mine)
    np.testing.assert_array_equal(mine[4].weight.detach().numpy(), handed.layers[2].weight)
    again, _ = as_reference(mine, T).for_backend("torch-sim-fixed")
    for name, value in handed.parameters().items():
        np.testing.assert_allclose(again.parameters()[name], value, rtol=1e-5, atol=1e-6)


def test_deploy_without_labels_says_whose_answers_validation_scores(
    trained: dict, capsys, monkeypatch
) -> None:
    """Spikes alone: the trained model's own answers are the labels, so its 'accuracy' on
    validation is the share of samples it does not tie on, not a measured accuracy; the
    summary says so (a new user read 'validation: trained 94.8 %' as the model's accuracy).
    Without the adaptation stage no progress bar is drawn (an empty 'adapt: 0it' showed)."""
    from polystep_neuro.run import progress

    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)  # a bar, if any
    model, (x, _) = trained["model"], trained["data"]["train"]
    result = pn.deploy(model, "torch-sim-fixed", data=x, time_steps=T, time_first=True,
                       budget=3000, adapt=False)  # fmt: skip
    assert "adapt" not in capsys.readouterr().err
    assert result.model_labelled_val
    (line,) = [ln for ln in result.summary().splitlines() if ln.startswith("validation")]
    assert line.startswith(
        "validation (no labels given: scored against the trained model's own answers, on which "
        "its own ties count as wrong): trained "
    )


def test_deploy_adapts_by_default_only_where_a_gap_is_left(trained: dict) -> None:
    """adapt=None: stage 3 runs where validation is 2 or more points below the trained model
    after stages 1-2 (said, with the flag that skips it), and is skipped, saying so, where it
    is within 2 points; adapt=True / False decide, and say so too."""
    from polystep_neuro.run.deploy import ADAPT_FROM

    model, (x, _) = trained["model"], trained["data"]["train"]
    runs = {}
    for adapt in (None, False):
        lines: list[str] = []
        runs[adapt] = (pn.deploy(model, "torch-sim-fixed", data=x, time_steps=T,
                                 time_first=True, budget=3000, adapt=adapt, progress=False,
                                 report=lines.append), lines)  # fmt: skip
    result, lines = runs[None]
    gap = result.reference["val_accuracy"] - result.split["val_accuracy"]
    assert gap >= ADAPT_FROM  # this network leaves a gap: the stage runs
    said = [ln for ln in lines if ln.startswith("adaptation: ")]
    assert said[0] == (f"adaptation: validation is {100 * gap:.1f} points below the trained "
                       "model, so PolyStep adapts the device network (adapt=False / --no-adapt "
                       "skips it)")  # fmt: skip
    # then, when the one step this budget leaves does not beat the calibrated network, that
    assert said[1:] in ([], ["adaptation: no step beat the calibrated network on validation in "
                             "1 step; it is handed back unchanged"])  # fmt: skip
    assert result.result.steps > 0 and runs[False][0].result.steps == 0
    assert [ln for ln in runs[False][1] if ln.startswith("adaptation: ")] == [
        "adaptation: skipped because it was turned off (adapt=False / --no-adapt)"
    ]
    assert result.adaptation == said[0] and said[0] in result.summary().splitlines()
    assert result.to_json()["adaptation"] == said[0]
    assert result.after["val_accuracy"] >= runs[False][0].after["val_accuracy"]


def test_a_gap_of_one_validation_sample_does_not_start_the_adaptation() -> None:
    """A user deploying on 200 samples got a 40-sample validation split, on which one sample
    is 2.5 points: the 2-point rule started a 3-minute adaptation on that one sample."""
    from polystep_neuro.run.deploy import _adapts

    runs, why = _adapts(None, {"val_accuracy": 0.9}, {"val_accuracy": 0.875}, 40)
    assert not runs and why == (
        "adaptation: skipped, validation is 2.5 points below the trained model, but that is "
        "one sample of 40: too few to tell (adapt=True / --adapt runs it anyway)"
    )
    assert _adapts(None, {"val_accuracy": 0.9}, {"val_accuracy": 0.85}, 40)[0]  # two samples
    assert _adapts(None, {"val_accuracy": 0.9}, {"val_accuracy": 0.87}, 269)[0]  # 3 points
    assert _adapts(True, {"val_accuracy": 0.9}, {"val_accuracy": 0.875}, 40)[0]


@pytest.mark.parametrize("copies", ["identical", "mirrored"])
def test_deploy_keeps_output_copies_only_where_validation_holds(
    trained: dict, copies: str, monkeypatch
) -> None:
    """Stage 2 doubles every output neuron (a class counted over both) and keeps that only
    where validation does not fall: identical copies change no decision and are kept; copies
    wired to the mirrored classes (class c's copy is class C-1-c) tie classes in pairs and
    are not."""
    from dataclasses import replace

    from polystep_neuro.core.network import NetworkSpec
    from polystep_neuro.run import deploy as deploy_module
    from polystep_neuro.run.output_copies import with_output_copies

    def doubled(spec: NetworkSpec) -> NetworkSpec:
        out = with_output_copies(spec, (0.0, 0.0))
        if copies == "mirrored":
            last, n = out.layers[-1], spec.n_out
            weight = last.weight.copy()
            weight[n:] = weight[:n][::-1]
            out = NetworkSpec([*out.layers[:-1], replace(last, weight=weight)], out.num_steps)
        return out

    monkeypatch.setattr(deploy_module, "with_output_copies", doubled)
    model, data = trained["model"], trained["data"]
    lines: list[str] = []
    result = pn.deploy(model, data=data["train"], validation=data["val"],
                       test={"test": data["test"]}, time_steps=T, time_first=True,
                       progress=False, report=lines.append, adapt=False)  # fmt: skip
    if copies == "identical":
        assert result.output_copies == 2 and result.spec.n_out == 20
        assert result.split == result.calibrated  # doubled counts, the same decisions
        assert any(line.startswith("output copies (each output neuron doubled") for line in lines)
    else:
        assert result.output_copies == 1 and result.spec.n_out == 10
        assert "output copies: not kept (less accurate on validation)" in lines
        assert result.split == result.calibrated
    assert result.after == result.split  # no adaptation: what stage 2 left is handed back


def pn_backend():
    from devices.readout import with_readout
    from devices.registry import open_backend

    return with_readout(open_backend("torch-sim-fixed", device="cpu"))


def _cli(capsys, *args) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_the_commands_convert_check_deploy_evaluate_and_export(
    trained: dict, tmp_path: Path, capsys
) -> None:
    model, data = trained["model"], trained["data"]
    torch.save(model, tmp_path / "model.pt")
    for name, (spikes, labels) in data.items():
        np.savez(tmp_path / f"{name}.npz", spikes=spikes, labels=labels)  # time-first files

    out = _cli(capsys, "convert", "--snntorch", tmp_path / "model.pt", "--time-steps", T,
               "--out", tmp_path / "net.npz")  # fmt: skip
    assert "for torch-sim-fixed" in out and "[approximate]" in out
    converted = NetworkSpec.load(tmp_path / "net.npz")
    assert [layer.delay for layer in converted.layers] == [1, 1, 1]

    out = _cli(capsys, "check", "--snntorch", tmp_path / "model.pt", "--time-steps", T,
               "--data", tmp_path / "val.npz", "--time-first",
               "--out", tmp_path / "check")  # fmt: skip
    assert "first divergence: layer 0" in out
    assert json.loads((tmp_path / "check" / "summary.json").read_text())["samples"] == len(
        data["val"][1]
    )

    run = tmp_path / "deploy"
    out = _cli(capsys, "deploy", "--snntorch", tmp_path / "model.pt", "--time-steps", T,
               "--data", tmp_path / "train.npz", "--val", tmp_path / "val.npz",
               "--test", f"test={tmp_path / 'test.npz'}", "--time-first",
               "--out", run, "--no-progress", "--no-adapt")  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recovered"]["val_accuracy"] >= summary["converted"]["val_accuracy"]
    assert summary["parameter_sets"] == 3 * 169 * 4  # the calibration alone
    assert summary["steps"] == 0
    assert "test test: trained" in out
    assert out.count("adaptation: skipped") == 1  # said as it ran, not again in the summary
    adapted = NetworkSpec.load(run / "adapted.npz")
    np.testing.assert_array_equal(
        NetworkSpec.load(run / "converted.npz").layers[0].weight.shape,
        adapted.layers[0].weight.shape,
    )

    # --resume with other data than config.json records is refused in one line
    code = main(["deploy", "--snntorch", str(tmp_path / "model.pt"), "--time-steps", str(T),
                 "--data", str(tmp_path / "val.npz"), "--time-first", "--out", str(run),
                 "--resume", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        f"--resume: the run in {run} was started with --data {tmp_path / 'train.npz'}, this "
        f"command gives {tmp_path / 'val.npz'}; give the same --data" in err
    )
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "train.npz")

    report = _cli(capsys, "evaluate", "--spec", run / "adapted.npz", "--data",
                  tmp_path / "test.npz", "--time-first", "--torch-device", "cpu")  # fmt: skip
    assert f"accuracy {summary['recovered']['test_accuracy']:.1%}" in report

    # a spec in snnTorch's semantics on the fixed-point device: the error names the remedy
    _cli(capsys, "convert", "--snntorch", tmp_path / "model.pt", "--time-steps", T,
         "--backend", "torch-sim", "--out", tmp_path / "snn.npz")  # fmt: skip
    code = main(["evaluate", "--spec", str(tmp_path / "snn.npz"), "--data",
                 str(tmp_path / "test.npz"), "--time-first"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "`polystep-neuro convert --spec FILE --out DEVICE.npz`" in err


def test_deploy_resume_names_and_takes_the_rank_rule_the_run_started_with(
    trained: dict, tmp_path: Path, capsys
) -> None:
    model, data = trained["model"], trained["data"]
    torch.save(model, tmp_path / "model.pt")
    np.savez(tmp_path / "train.npz", spikes=data["train"][0], labels=data["train"][1])
    run = tmp_path / "deploy"
    args = ["deploy", "--snntorch", str(tmp_path / "model.pt"), "--time-steps", str(T),
            "--data", str(tmp_path / "train.npz"), "--time-first", "--out", str(run),
            "--no-progress", "--no-output-copies", "--adapt",
            "--budget", str(3 * 169 * 4 + 3000)]  # fmt: skip
    _cli(capsys, *args, "--rank-rule", "equal")
    first = json.loads((run / "summary.json").read_text())
    assert first["steps"] > 0

    # resuming under the default (one subspace over every tensor) is refused in one line
    code = main([*args, "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "need --rank-rule equal" in err

    # with the rule it started with, it resumes (nothing left to do: the same network)
    _cli(capsys, *args, "--rank-rule", "equal", "--resume")
    again = json.loads((run / "summary.json").read_text())
    assert again["steps"] == first["steps"]
    assert again["recovered"] == first["recovered"]


def test_an_adaptation_that_hands_back_the_start_says_so(monkeypatch) -> None:
    """`deploy --adapt` whose every step fell below the calibrated network on validation
    handed it back unchanged, and the last line was only why the stage ran."""
    from types import SimpleNamespace

    from polystep_neuro.run import deploy as deploy_module

    stub = SimpleNamespace(
        layout=SimpleNamespace(names=("fc0.weight",)),
        resume=lambda: 4,
        run=lambda steps: SimpleNamespace(kept_start=True, steps=steps),
    )
    monkeypatch.setattr(deploy_module.Adapter, "build", lambda *a, **k: stub)
    monkeypatch.setattr(deploy_module, "make_layout", lambda spec, options: None)
    monkeypatch.setattr(deploy_module, "polystep_candidates", lambda layout, options: 10)
    said: list[str] = []
    sets = SimpleNamespace(stream=None, validation={}, test={})
    deploy_module._adaptation_stage(
        SimpleNamespace(spec=None), sets, deploy_module.Settings(), None, backend="torch-sim",
        budget=80, where=None, out_dir="runs/x", progress=False, resume=True, say=said.append,
    )  # fmt: skip
    assert said[1] == "resuming the adaptation at step 4 of 8 from runs/x"
    assert said[-1] == (
        "adaptation: no step beat the calibrated network on validation in 8 steps; it is "
        "handed back unchanged"
    )


def test_a_gap_of_two_points_gets_its_share_whatever_the_rounding() -> None:
    """'trained 62.6%, on the device 60.6% (-2.0 points), recovered 66.0% (a gap under 2
    points: no share of it given)': float32 shares put the gap a hair under 0.02."""
    from types import SimpleNamespace

    from polystep_neuro.run.deploy import Deployment

    share = {"shifted_accuracy": np.float32(0.626)}
    deployed = Deployment(
        spec=None, start=None, result=SimpleNamespace(end={"shifted_accuracy": np.float32(0.66)}),
        changes=[], reference=share, before={"shifted_accuracy": np.float32(0.606)},
    )  # fmt: skip
    assert deployed.summary() == (
        "shifted test: trained 62.6%, on the device 60.6% (-2.0 points), recovered 66.0%, "
        "270% of the gap closed"
    )


def test_validation_the_model_gets_all_right_is_said() -> None:
    """A user passed the model's training spikes as `data`: validation read 'trained 100.0%,
    on the device 100.0%, recovered 100.0%' and every later choice rested on it, unsaid."""
    from types import SimpleNamespace

    from polystep_neuro.run.deploy import _memorised_note

    def sets(accuracy: float, model_labelled: bool = False) -> SimpleNamespace:
        return SimpleNamespace(
            reference_scores={"val_accuracy": accuracy}, model_labelled_val=model_labelled
        )

    assert _memorised_note(sets(1.0), 800) == (
        "note: the trained model is right on all 800 validation samples; if --data / data= is "
        "what it was trained on, validation cannot tell the device networks apart (every "
        "choice below rests on it): give data it did not train on"
    )
    assert _memorised_note(sets(0.99), 800) is None  # it errs somewhere: validation can tell
    assert _memorised_note(sets(1.0), 40) is None  # too few to say (the few-samples note does)
    assert _memorised_note(sets(1.0, model_labelled=True), 800) is None  # its own answers
