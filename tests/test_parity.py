"""`polystep-neuro check` / `pn.check`: per-layer parity of a device network with the trained
model, read through the device contract alone, so it answers the same on every backend."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.cli import main
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.losses import accuracy, decisions
from polystep_neuro.run.parity import check_parity
from polystep_neuro.run.reference import Reference, as_reference
from simulators.torch_lif import TorchLIF

snn = pytest.importorskip("snntorch")

T = 10


def default_model(seed: int = 0) -> torch.nn.Sequential:
    """snnTorch's defaults: Linear biases, subtract reset, reset_delay=True; Synaptic hidden
    layers, three layers, a Leaky output."""
    torch.manual_seed(seed)
    grad = functools.partial(snn.surrogate.ATan.apply, alpha=2.0)
    model = torch.nn.Sequential(
        torch.nn.Linear(12, 16),
        snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=grad, init_hidden=True),
        torch.nn.Linear(16, 12),
        snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=grad, init_hidden=True),
        torch.nn.Linear(12, 4),
        snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, output=True),
    )
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(2.5)
                layer.bias.add_(0.05)
    return model


def data(n: int = 48, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, T, 12)) < 0.35).astype(np.float32), rng.integers(0, 4, n)


def test_hidden_counts_read_through_the_contract_are_the_networks_own() -> None:
    """Cutting the network after layer k and reading its output counts gives layer k's
    counts exactly: a spec against itself on the float simulator agrees everywhere."""
    spec = NetworkSpec.random([12, 16, 12, 4], T, seed=3, du=0.4, dv=0.2, weight_gain=3.0)
    x, y = data()
    with pn_backend("torch-sim") as backend:
        report = check_parity(Reference(spec, "itself"), backend, spec, x, y)
    recorded = TorchLIF(spec).evaluate({}, x, record=True).spikes
    assert recorded is not None
    for row, spikes in zip(report.layers, recorded, strict=True):
        assert (row.equal, row.alone_equal, row.rate_difference) == (1.0, 1.0, 0.0)
        assert row.reference_rate == pytest.approx(float(spikes.mean()), rel=1e-6)
        assert row.reference_rate > 0.02
    assert report.first_divergence is None and report.largest_divergence is None
    assert report.device_accuracy == report.reference_accuracy
    # every sample decided alike, or left undecided by both (a tie is no decision: both tying
    # on every sample read "the same decision on 100.0% of samples")
    assert report.same_prediction + report.both_undecided == pytest.approx(1.0)
    assert report.both_undecided == report.reference_ties == report.device_ties > 0


def pn_backend(name: str):
    from devices.registry import open_backend

    return open_backend(name, device="cpu") if name.startswith("torch") else open_backend(name)


@pytest.mark.parametrize("broken", [0, 1, 2])
def test_check_localises_a_broken_threshold_to_its_layer(broken: int) -> None:
    """The default model converted for torch-sim-fixed, then one layer's threshold doubled:
    every layer differs a little (the device's reset and timing), the broken one alone
    differs most, and the check names it."""
    model = default_model(seed=1)
    x, y = data(seed=2)
    reference = as_reference(model, T)
    good, changes = reference.for_backend("torch-sim-fixed")
    layers = list(good.layers)
    layers[broken] = replace(layers[broken], vth=layers[broken].vth * 2)
    bad = NetworkSpec(layers, T)
    with pn_backend("torch-sim-fixed") as backend:
        fine = check_parity(reference, backend, good, x, y, changes=changes)
        report = check_parity(reference, backend, bad, x, y, changes=changes)
    assert report.largest_divergence == broken
    row, was = report.layers[broken], fine.layers[broken]
    # measured: 13-18 % of the reference's rate before, 27-60 % once broken
    assert row.alone_relative_difference > 1.5 * was.alone_relative_difference
    assert row.device_rate < 0.8 * was.device_rate  # it fires less
    for k in range(broken):  # the layers before it are untouched
        assert report.layers[k] == fine.layers[k]
    assert report.first_divergence == 0  # the conversion itself changes layer 0 already
    assert f"largest divergence of a layer's own: layer {broken}" in report.table()
    # the conversion's own changes are listed per layer, approximate ones marked
    assert any("[approximate]" in c for c in report.layers[0].changes)


def test_check_command_and_api_agree(tmp_path: Path, capsys) -> None:
    model = default_model()
    torch.save(model, tmp_path / "model.pt")
    x, y = data()
    np.savez(tmp_path / "data.npz", spikes=x.transpose(1, 0, 2), labels=y)  # time-first
    code = main(["check", "--snntorch", str(tmp_path / "model.pt"), "--time-steps", str(T),
                 "--data", str(tmp_path / "data.npz"), "--time-first", "--out",
                 str(tmp_path / "check"), "--torch-device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "check" / "summary.json").read_text())
    report = pn.check(model, "torch-sim-fixed", x.transpose(1, 0, 2), y, time_steps=T,
                      time_first=True, torch_device="cpu")  # fmt: skip
    expected = json.loads(json.dumps(report.to_json()))
    assert summary.pop("reference") == f"snnTorch model {tmp_path / 'model.pt'}"
    assert expected.pop("reference") == "the snnTorch model"
    assert summary == expected
    assert summary["first_divergence"] == 0 and len(summary["layers"]) == 3
    assert "| layer | neurons | spikes/step reference |" in out
    assert "output accuracy on 48 samples: reference" in out
    assert (tmp_path / "check" / "parity.md").read_text().startswith("| layer |")
    # a device network given as a file: the converted one checks the same
    spec, _ = as_reference(model, T).for_backend("torch-sim-fixed")
    spec.save(tmp_path / "dev.npz")
    code = main(["check", "--snntorch", str(tmp_path / "model.pt"), "--time-steps", str(T),
                 "--device-spec", str(tmp_path / "dev.npz"), "--data",
                 str(tmp_path / "data.npz"), "--time-first", "--out",
                 str(tmp_path / "c2")])  # fmt: skip
    capsys.readouterr()
    again = json.loads((tmp_path / "c2" / "summary.json").read_text())
    assert code == 0 and again["layers"] == summary["layers"]


def _require_lava() -> None:
    from devices.lava_env import find_lava_env

    if find_lava_env() is None:
        message = "no Lava env: run `polystep-neuro devices setup-lava`"
        if os.environ.get("POLYSTEP_REQUIRE_LAVA") == "1":
            pytest.fail(f"POLYSTEP_REQUIRE_LAVA=1 but {message}")
        pytest.skip(message)


def _require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        if os.environ.get("POLYSTEP_REQUIRE_RAY") == "1":
            pytest.fail("POLYSTEP_REQUIRE_RAY=1 but Ray is not installed")
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')


@pytest.mark.parametrize("where", ["remote", "ray", "lava-fixed"])
def test_check_answers_the_same_on_every_backend(where: str) -> None:
    """torch-sim-fixed is bit-exact with Lava's fixed_pt models and is what a remote server
    and Ray actors run: the per-layer report is identical through each of them."""
    model = default_model()
    x, y = data(16)
    expected = pn.check(model, "torch-sim-fixed", x, y, time_steps=T, torch_device="cpu")
    if where == "remote":
        from tests._servers import ThreadServer

        server = ThreadServer("torch-sim-fixed")
        try:
            got = pn.check(model, server.endpoint, x, y, time_steps=T)
        finally:
            server.stop()
    elif where == "ray":
        _require_ray()
        got = pn.check(model, "ray:torch-sim-fixed", x, y, time_steps=T)
    else:
        _require_lava()
        got = pn.check(model, "lava-fixed", x, y, time_steps=T)
    assert got.layers == expected.layers
    assert (got.device_accuracy, got.same_prediction) == (
        expected.device_accuracy,
        expected.same_prediction,
    )


def test_the_same_decision_reads_ties_as_accuracy_does() -> None:
    """Accuracy counts a tie between output neurons as wrong, so agreement must too: a
    sample the reference ties and the device decides differs, and the accuracy gap can
    never exceed the share of samples that differ (a new user read '-4.8 points' beside
    'the same top neuron on 96.9 %' as a contradiction)."""
    ref = torch.tensor([[3, 3, 0], [5, 1, 0], [0, 0, 0], [1, 4, 4]])
    dev = torch.tensor([[3, 0, 0], [5, 1, 0], [0, 0, 0], [1, 4, 2]])
    assert decisions(ref).tolist() == [-1, 0, -1, -1]
    assert decisions(dev).tolist() == [0, 0, -1, 1]
    labels = torch.tensor([0, 0, 0, 1])
    agree = float((decisions(ref) == decisions(dev)).float().mean())
    gap = abs(
        float(accuracy(dev[None].float(), labels)[0] - accuracy(ref[None].float(), labels)[0])
    )
    assert agree == 0.5 and gap <= 1 - agree + 1e-9


def test_the_summary_says_how_often_each_side_ties() -> None:
    """Most of a small deployment gap is samples the device's coarser counts tie on (docs/
    benchmarks.md, section 11): the report counts ties on both sides and says so when the
    device ties more."""
    from polystep_neuro.run.parity import ParityReport

    def report(ref: float, dev: float) -> ParityReport:
        return ParityReport("torch-sim-fixed", "cpu", "model", 100, 8, [], 0.9, 0.88, 0.95,
                            reference_ties=ref, device_ties=dev)  # fmt: skip

    more = report(0.01, 0.03).summary().splitlines()[-1]
    assert more.startswith(
        "ties for the top output count (no decision, counted wrong): reference 1.0%, "
        "torch-sim-fixed 3.0% — the device's coarser counts tie more often"
    )
    assert report(0.01, 0.012).summary().splitlines()[-1].endswith("torch-sim-fixed 1.2%")
