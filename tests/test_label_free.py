"""Adapting without labels: the objectives, unlabelled data end to end (API and CLI), and the
label-free choice of what is handed back (rolled back when the objective did not improve)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.cli import main
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.evaluation import flat_scores
from polystep_neuro.run.label_free import (
    BALANCE_WEIGHT,
    class_balance,
    information_maximisation,
    make_objective,
    prediction_entropy,
)
from polystep_neuro.run.selection import PROXY_MARGIN, Selection

T = 6


def test_information_maximisation_prefers_confident_predictions_that_use_every_class() -> None:
    confident = torch.tensor([[[20.0, 0, 0], [0, 20, 0], [0, 0, 20]]])  # one class each
    unsure = torch.zeros(1, 3, 3)  # every class alike
    collapsed = torch.tensor([[[20.0, 0, 0], [20, 0, 0], [20, 0, 0]]])  # one class for all
    im = [float(information_maximisation(c, scale=1.0)[0]) for c in (confident, unsure, collapsed)]
    assert BALANCE_WEIGHT == 1.5
    assert im[0] == pytest.approx(-1.5 * math.log(3), abs=1e-6)  # entropy 0, balance log 3
    assert im[1] == pytest.approx(-0.5 * math.log(3), abs=1e-6)  # entropy log 3, balance log 3
    assert im[2] == pytest.approx(0.0, abs=1e-6)  # entropy 0, balance 0
    # the balance weighs more than confidence: collapsing onto one class is the worst of the
    # three, worse than being unsure (at weight 1 the two tied)
    assert im[0] < im[1] < im[2]
    assert float(information_maximisation(unsure, 1.0, balance=1.0)[0]) == pytest.approx(0.0)
    assert float(prediction_entropy(unsure, 1.0)[0]) == pytest.approx(math.log(3))
    assert float(class_balance(collapsed, 1.0)[0]) == pytest.approx(0.0, abs=1e-6)


def test_an_objective_ignores_the_targets_and_an_unknown_name_is_refused() -> None:
    counts = torch.rand(4, 8, 3) * 5
    objective = make_objective("im")
    a = objective(counts, torch.zeros(8, dtype=torch.long))
    b = objective(counts, torch.full((8,), -1))
    assert a.shape == (4,) and torch.equal(a, b)
    with pytest.raises(PolystepError, match="unknown label-free objective 'tent'; choose one"):
        make_objective("tent")


def test_unlabelled_data_scores_no_accuracy() -> None:
    spec = NetworkSpec.random([16, 8, 4], T, seed=0, writable=("fc1.weight",))
    data = SpikeDataset(np.zeros((10, T, 16), np.uint8), None, 5)
    assert not data.labelled and data.labels.tolist() == [-1] * 10

    class Silent:
        def evaluate(self, params, inputs):
            return torch.zeros(1, inputs.shape[0], spec.n_out)

    scores = flat_scores(Silent(), make_objective("im"), {}, {"drifted": data}, {})
    # every class alike on every sample: entropy log 4, less the balance's weight x log 4
    silent = (1 - BALANCE_WEIGHT) * math.log(spec.n_out)
    assert "val_accuracy" not in scores and scores["val_loss"] == pytest.approx(silent, abs=1e-6)


def test_the_label_free_choice_rolls_back_unless_the_objective_drops_by_the_margin() -> None:
    start = torch.zeros(3)
    chosen = Selection(start, enabled=True, label_free=True)
    chosen.consider(start, 0, {"val_loss": -1.0})
    barely = torch.ones(3)
    chosen.consider(barely, 10, {"val_loss": -1.0 - PROXY_MARGIN / 2})
    history = [{"step": 0, "val_loss": -1.0}, {"step": 10, "val_loss": -1.0 - PROXY_MARGIN / 2}]
    step, x = chosen.choice(10, barely, history)
    assert step == 0 and torch.equal(x, start)  # barely moved: the start is handed back
    better = torch.full((3,), 2.0)
    chosen.consider(better, 20, {"val_loss": -1.1})
    history.append({"step": 20, "val_loss": -1.1})
    assert chosen.choice(20, better, history)[0] == 20
    worse = torch.full((3,), 3.0)
    chosen.consider(worse, 30, {"val_loss": -0.9})
    history.append({"step": 30, "val_loss": -0.9})
    step, x = chosen.choice(30, worse, history)
    assert step == 20 and torch.equal(x, better)  # the last point is worse: the best one


@pytest.fixture(scope="module")
def field_data() -> dict:
    """A 16-12-4 network and class-coded spikes whose input gain halved; labels kept aside."""
    rng = np.random.default_rng(0)

    def spikes(n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, size=n)
        rates = rng.random((n, 16)) * 0.2
        rates[np.arange(n)[:, None], labels[:, None] * 4 + np.arange(4)] += 0.6 * gain
        return (rng.random((n, T, 16)) < rates[:, None, :]).astype(np.uint8), labels

    spec = NetworkSpec.random([16, 12, 4], T, seed=1)
    spec = spec.with_writable(("fc0.weight", "lif0.v_bias", "fc1.weight", "lif1.v_bias"))
    return {"spec": spec, "drifted": spikes(160, 0.5), "clean": spikes(80, 1.0)}


def test_the_api_names_the_layout_of_spikes_alone(field_data) -> None:
    """Spikes alone in snnTorch's time-first layout without ``time_first=True``: the API says
    so, as the commands do, instead of the bare shape error; and the flag's misuse too."""
    x_drift, _ = field_data["drifted"]
    turned = np.ascontiguousarray(np.asarray(x_drift).swapaxes(0, 1))
    with pytest.raises(PolystepError, match=r"looks time-first .* \(time_first=True\)"):
        pn.adapt(field_data["spec"], train=turned, steps=1, torch_device="cpu", progress=False)
    with pytest.raises(PolystepError, match=r"already batch-first .* \(time_first=False\)"):
        pn.adapt(
            field_data["spec"],
            train=x_drift,
            time_first=True,
            steps=1,
            torch_device="cpu",
            progress=False,
        )


def test_the_api_adapts_spikes_alone_with_a_label_free_objective(field_data, capsys) -> None:
    x_drift, y_drift = field_data["drifted"]
    result = pn.adapt(
        field_data["spec"],
        train=x_drift,  # no labels
        test={"drifted": (x_drift, y_drift)},  # labels only for the report
        steps=8,
        rank=4,
        torch_device="cpu",
        progress=True,
    )
    out = capsys.readouterr().out
    assert "without labels: adapting to the label-free objective 'im'" in out
    assert "the label-free objective 'im' on the device's outputs (lower is better);" in out
    assert result.result.adapted == ("lif0.v_bias", "lif0.vth")  # hidden biases, thresholds
    assert "without labels: adapting the hidden neurons' biases and thresholds" in out
    start, end = result.result.start, result.result.end
    assert "val_accuracy" not in start and "val_loss" in start  # held out, unlabelled
    assert "drifted_accuracy" in start and "drifted_accuracy" in end
    assert "validation objective (no labels)" in result.summary()
    if result.result.best_step == 0:  # rolled back: exactly the start
        np.testing.assert_array_equal(result.spec.layers[0].v_bias, result.start.layers[0].v_bias)
    else:  # handed back only when the objective dropped by the margin
        assert end["val_loss"] <= start["val_loss"] - PROXY_MARGIN


def test_the_adapt_command_takes_a_data_file_without_labels(field_data, tmp_path: Path) -> None:
    x_drift, y_drift = field_data["drifted"]
    np.savez(tmp_path / "field.npz", spikes=x_drift)
    np.savez(tmp_path / "labelled.npz", spikes=x_drift, labels=y_drift)
    field_data["spec"].save(tmp_path / "spec.npz")
    code = main([
        "adapt", "--spec", str(tmp_path / "spec.npz"), "--data", str(tmp_path / "field.npz"),
        "--test", f"drifted={tmp_path / 'labelled.npz'}", "--steps", "4", "--rank", "4",
        "--torch-device", "cpu", "--out", str(tmp_path / "run"), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["adapted"] == ["lif0.v_bias", "lif0.vth"] and summary["anchor"] == 2.0
    assert "val_loss" in summary["start"] and "val_accuracy" not in summary["start"]
    assert "drifted_accuracy" in summary["end"]


def test_label_free_ignores_the_labels_a_file_has(field_data, tmp_path: Path, capsys) -> None:
    """``--label-free`` on a labelled file is the run on the same spikes without labels, to
    the bit: the labels are not read (a user measures the label-free recipe on data they can
    score it with)."""
    x_drift, y_drift = field_data["drifted"]
    np.savez(tmp_path / "field.npz", spikes=x_drift)
    np.savez(tmp_path / "labelled.npz", spikes=x_drift, labels=y_drift)
    field_data["spec"].save(tmp_path / "spec.npz")
    common = ["--steps", "4", "--rank", "4", "--torch-device", "cpu", "--no-progress"]
    spec = ["adapt", "--spec", str(tmp_path / "spec.npz")]
    assert main([*spec, "--data", str(tmp_path / "field.npz"), *common,
                 "--out", str(tmp_path / "plain")]) == 0  # fmt: skip
    assert main([*spec, "--data", str(tmp_path / "labelled.npz"), "--label-free", *common,
                 "--out", str(tmp_path / "ignored")]) == 0  # fmt: skip
    plain = NetworkSpec.load(tmp_path / "plain" / "adapted.npz").parameters()
    ignored = NetworkSpec.load(tmp_path / "ignored" / "adapted.npz").parameters()
    assert plain.keys() == ignored.keys()
    for name in plain:
        np.testing.assert_array_equal(plain[name], ignored[name])
    summary = json.loads((tmp_path / "ignored" / "summary.json").read_text())
    assert summary["adapted"] == ["lif0.v_bias", "lif0.vth"]
    np.savez(tmp_path / "clean.npz", spikes=field_data["clean"][0], labels=field_data["clean"][1])
    capsys.readouterr()
    code = main([*spec, "--data", str(tmp_path / "labelled.npz"), *common, "--resume",
                 "--out", str(tmp_path / "ignored")])  # fmt: skip
    assert code == 2
    assert ("was started with --label-free, which decides its objective; resume it with "
            "--label-free") in capsys.readouterr().err  # fmt: skip
    code = main([*spec, "--data", str(tmp_path / "labelled.npz"), "--label-free", "--replay",
                 str(tmp_path / "clean.npz"), *common, "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 2
    assert "a label-free run takes no replay" in capsys.readouterr().err
    assert "val_loss" in summary["start"] and "val_accuracy" not in summary["start"]


def test_the_api_label_free_is_the_run_without_labels_and_takes_no_replay(field_data) -> None:
    x_drift, y_drift = field_data["drifted"]
    common = dict(steps=4, rank=4, torch_device="cpu", progress=False)
    plain = pn.adapt(field_data["spec"], train=x_drift, **common)
    ignored = pn.adapt(field_data["spec"], train=(x_drift, y_drift), label_free=True, **common)
    for name, value in plain.spec.parameters().items():
        np.testing.assert_array_equal(value, ignored.spec.parameters()[name])
    assert "val_accuracy" not in ignored.result.start
    with pytest.raises(PolystepError, match=r"^a label-free run takes no replay: clean replay "
                       r"comes with labels"):  # fmt: skip
        pn.adapt(field_data["spec"], train=x_drift, label_free=True,
                 replay=field_data["clean"], **common)  # fmt: skip


def test_label_free_on_the_built_in_data_adapts_to_the_named_corruption(
    tmp_path: Path, capsys
) -> None:
    spec = NetworkSpec.random([64, 16, 10], T, seed=2)
    spec.save(tmp_path / "spec.npz")
    args = ["adapt", "--spec", str(tmp_path / "spec.npz"), "--label-free", "--steps", "2",
            "--rank", "4", "--torch-device", "cpu", "--no-progress",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 2
    assert ("--label-free on the built-in data adapts to a drift: name one with --corruption "
            "NAME") in capsys.readouterr().err  # fmt: skip
    assert main([*args, "--corruption", "fog"]) == 0
    out = capsys.readouterr().out
    assert "digits under fog, severity 3, without labels" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["adapted"] == ["lif0.v_bias", "lif0.vth"] and summary["anchor"] == 2.0
    assert "val_loss" in summary["start"] and "val_accuracy" not in summary["start"]
    assert {"clean_accuracy", "shifted_accuracy"} <= summary["end"].keys()


def test_the_objective_is_chosen_by_name_in_the_api_and_the_command(
    field_data, tmp_path: Path, capsys
) -> None:
    x_drift, _ = field_data["drifted"]
    pn.adapt(field_data["spec"], train=x_drift, steps=1, rank=4, torch_device="cpu",
             objective="entropy")  # fmt: skip
    assert "the label-free objective 'entropy' on the device's outputs" in capsys.readouterr().out
    np.savez(tmp_path / "field.npz", spikes=x_drift)
    field_data["spec"].save(tmp_path / "spec.npz")
    args = ["adapt", "--spec", str(tmp_path / "spec.npz"), "--data", str(tmp_path / "field.npz"),
            "--steps", "1", "--rank", "4", "--torch-device", "cpu", "--no-progress",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--objective", "entropy"]) == 0
    assert "the label-free objective 'entropy'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--objective", "bogus"])
    assert "argument --objective: invalid choice: 'bogus'" in capsys.readouterr().err


def test_evaluate_still_needs_labels(field_data, tmp_path: Path, capsys) -> None:
    np.savez(tmp_path / "field.npz", spikes=field_data["drifted"][0])
    field_data["spec"].save(tmp_path / "spec.npz")
    code = main(["evaluate", "--spec", str(tmp_path / "spec.npz"), "--data",
                 str(tmp_path / "field.npz"), "--torch-device", "cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "field.npz holds no 'labels' (unlabelled data), and this command scores accuracy" in err
    assert "not a file in the archive" not in err


@pytest.mark.parametrize(
    ("backend", "adapted", "said"),
    [
        ("torch-sim-fixed", ("lif0.v_bias", "lif1.v_bias", "lif0.vth", "lif1.vth"),
         "biases and thresholds (lif0.v_bias, lif1.v_bias, lif0.vth, lif1.vth)"),
        # Lava caches thresholds: biases only, and the line says so
        ("lava-fixed", ("lif0.v_bias", "lif1.v_bias"),
         "biases (lava-fixed cannot rewrite thresholds) (lif0.v_bias, lif1.v_bias)"),
    ],
)  # fmt: skip
def test_without_labels_the_hidden_biases_and_rewritable_thresholds_adapt(backend, adapted, said):
    from devices.catalog import RECORDS
    from polystep_neuro.core.contract import Capabilities
    from polystep_neuro.run.writable import resolve_writable

    record = RECORDS[backend]
    caps = Capabilities(backend, record.precision, writable=record.writable)
    spec = NetworkSpec.random([16, 12, 8, 4], T, seed=0)
    chosen = resolve_writable(spec, None, caps, has_clean=False, label_free=True)
    assert chosen.adapted == adapted
    assert f"without labels: adapting the hidden neurons' {said}, which" in chosen.note
    assert set(adapted) <= set(chosen.loaded)  # the network handed back keeps them writable
    assert "lif2.vth" not in chosen.adapted  # never the output layer's
    named = resolve_writable(spec, ["lif0.v_bias"], caps, has_clean=False, label_free=True)
    assert named.adapted == ("lif0.v_bias",)  # naming the set overrides the default
    # a network whose spec marks no bias writable: the hidden biases are added (thresholds
    # alone barely moved the objective), and kept writable in what is handed back
    marked = spec.with_writable(["fc2.weight"])
    wider = resolve_writable(marked, None, caps, has_clean=False, label_free=True)
    assert wider.adapted == adapted
    assert wider.loaded == ("fc2.weight", *adapted)
    assert wider.note is not None and "(the biases added: the network marks none writable)" in (
        wider.note
    )
