"""The snnTorch user's path, end to end: train with BPTT, hand the model over, adapt on a
fixed-point device to drifted data, and take it back — through the one-call API and through
the CLI pipeline (convert -> adapt -> evaluate -> export), with identical spike counts at each
hand-over that keeps the arithmetic (module -> spec, spec -> NIR -> spec, adapted spec ->
the user's own module, which runs it in snnTorch's timing).  The model is trained with the
device's reset (zero, in the spiking step); tests/test_snntorch_defaults.py takes snnTorch's
own defaults the same way."""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.cli import main
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import InputShift, load_digits_split, rate_encode
from simulators.torch_lif import TorchLIF

snn = pytest.importorskip("snntorch")
pytest.importorskip("nir")

from snntorch import utils as snn_utils  # noqa: E402

from polystep_neuro.run.interop.nir import read_nir, write_nir  # noqa: E402


def read_nir_graph(path: Path):
    import nir

    return nir.read(path)


from polystep_neuro.run.interop.snntorch import from_snntorch, run_snntorch  # noqa: E402

T = 8
SHIFT = InputShift(gain=0.5, dead_fraction=0.2, seed=1)


@pytest.fixture(scope="module")
def trained() -> dict:
    """A 64-32-10 snnTorch model trained with BPTT for 3 epochs, and the digits as spikes."""
    torch.manual_seed(0)
    grad = functools.partial(snn.surrogate.ATan.apply, alpha=2.0)  # picklable (torch.save)
    neuron = dict(beta=0.9, reset_mechanism="zero", reset_delay=False, init_hidden=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32),
        snn.Leaky(spike_grad=grad, **neuron),
        torch.nn.Linear(32, 10),
        snn.Leaky(spike_grad=grad, output=True, **neuron),
    )
    split = load_digits_split(0)
    x = {
        "train": rate_encode(split.x_train, T),
        "drifted": rate_encode(SHIFT(split.x_train), T),
        "clean_test": rate_encode(split.x_test, T),
        "shifted_test": rate_encode(SHIFT(split.x_test), T),
    }
    y = {"train": split.y_train, "drifted": split.y_train}
    y["clean_test"] = y["shifted_test"] = split.y_test
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = torch.as_tensor(x["train"], dtype=torch.float32), torch.as_tensor(y["train"])
    for _ in range(3):
        for first in range(0, len(ys), 128):
            snn_utils.reset(model)
            counts = sum(model(xs[first : first + 128, t])[0] for t in range(T))
            loss = torch.nn.functional.cross_entropy(counts * 0.5, ys[first : first + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"model": model, "x": x, "y": y}


def _float_counts(spec: NetworkSpec, x: np.ndarray) -> np.ndarray:
    return TorchLIF(spec, "float32").counts({}, x)[0].numpy()


def test_the_api_path_hands_over_with_identical_counts(trained, tmp_path: Path) -> None:
    model, x, y = trained["model"], trained["x"], trained["y"]
    # Hand-over 1: the module as a spec computes exactly what snnTorch computes.
    spec = from_snntorch(model, T)
    expected = run_snntorch(model, x["clean_test"]).numpy()
    np.testing.assert_array_equal(_float_counts(spec, x["clean_test"]), expected)

    result = pn.adapt(
        model,
        "torch-sim-fixed",
        time_steps=T,
        train=(x["drifted"].transpose(1, 0, 2), y["drifted"]),  # as snnTorch's spikegen
        time_first=True,
        test={  # time_first applies to every array given
            "clean": (x["clean_test"].transpose(1, 0, 2), y["clean_test"]),
            "shifted": (x["shifted_test"].transpose(1, 0, 2), y["shifted_test"]),
        },
        writable=("fc0.weight", "fc1.weight"),
        steps=20,
        rank=16,
        progress=False,
    )
    assert isinstance(result, pn.Adaptation)
    assert result.spec.writable == ("fc0.weight", "fc1.weight")
    assert set(result.result.start) >= {"clean_accuracy", "shifted_accuracy", "val_accuracy"}
    assert result.result.end["val_accuracy"] >= result.result.start["val_accuracy"]
    assert len(result.history) == 21 and "never" not in result.summary()
    assert repr(result.spec).startswith("NetworkSpec(64 -> 32 -> 10")

    # Hand-over 2: spec -> NIR file -> spec is exact.
    write_nir(result.spec, tmp_path / "adapted.nir")
    back = read_nir(tmp_path / "adapted.nir")
    for name, value in result.spec.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)

    # Hand-over 3: the adapted weights in the user's own module (whatever its names), which
    # runs them in snnTorch's timing: the adapted network without the device's one-step delay.
    assert [layer.delay for layer in result.spec.layers] == [1, 1]  # what the device ran
    mine = copy.deepcopy(model)
    result.load_into(mine)
    np.testing.assert_array_equal(mine[0].weight.detach().numpy(), result.spec.layers[0].weight)
    snntorch_timed = NetworkSpec([replace(layer, delay=0) for layer in result.spec.layers], T)
    np.testing.assert_array_equal(
        run_snntorch(mine, x["shifted_test"]).numpy(),
        _float_counts(snntorch_timed, x["shifted_test"]),
    )
    assert not np.array_equal(mine[2].weight.detach().numpy(), model[2].weight.detach().numpy())


def _cli(capsys, *args) -> str:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_the_cli_pipeline_converts_adapts_evaluates_and_exports(
    trained, tmp_path: Path, capsys
) -> None:
    model, x, y = trained["model"], trained["x"], trained["y"]
    torch.save(model, tmp_path / "model.pt")
    for name in ("drifted", "clean_test", "shifted_test"):
        spikes = x[name].transpose(1, 0, 2)  # time-first files
        np.savez(tmp_path / f"{name}.npz", spikes=spikes, labels=y[name])

    _cli(capsys, "convert", "--snntorch", tmp_path / "model.pt", "--time-steps", T,
         "--backend", "torch-sim", "--out", tmp_path / "spec.npz")  # fmt: skip
    converted = NetworkSpec.load(tmp_path / "spec.npz")
    assert converted.writable == ("fc0.weight", "lif0.v_bias", "fc1.weight", "lif1.v_bias")
    np.testing.assert_array_equal(
        _float_counts(converted, x["clean_test"]), run_snntorch(model, x["clean_test"]).numpy()
    )

    run = tmp_path / "run"
    out = _cli(
        capsys, "adapt", "--spec", tmp_path / "spec.npz", "--data", tmp_path / "drifted.npz",
        "--time-first", "--test", f"clean={tmp_path / 'clean_test.npz'}",
        "--test", f"shifted={tmp_path / 'shifted_test.npz'}", "--steps", 12, "--rank", 16,
        "--out", run, "--no-progress",
    )  # fmt: skip
    # drifted data only: the hidden biases, anchored to the start (polystep_neuro.run.run_defaults)
    assert "drifted data only: adapting the hidden neurons' biases (lif0.v_bias)" in out
    assert "anchored to the starting network (weight 2)" in out
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["anchor"] == 2.0 and config["time_first"] is True
    assert config["writable"] == ["lif0.v_bias"] and summary["adapted"] == ["lif0.v_bias"]
    # the file handed back keeps what the device can rewrite: a later run with clean replay
    # adapts all of it, not only what this drifted-only run chose
    assert NetworkSpec.load(run / "adapted.npz").writable == converted.writable
    assert summary["end"]["val_accuracy"] >= summary["start"]["val_accuracy"]
    assert {"clean_accuracy", "shifted_accuracy"} <= set(summary["start"])
    assert (run / "adapt.png").stat().st_size > 10_000

    report = _cli(capsys, "evaluate", "--spec", run / "adapted.npz", "--data",
                  tmp_path / "shifted_test.npz", "--time-first",
                  "--torch-device", "cpu")  # fmt: skip
    assert f"accuracy {summary['end']['shifted_accuracy']:.1%}" in report
    # the same from Python (there was no pn.evaluate): the file, and the snnTorch model itself
    import polystep_neuro as pn

    scored = pn.evaluate(run / "adapted.npz", tmp_path / "shifted_test.npz", "torch-sim-fixed",
                         time_first=True)  # fmt: skip
    assert scored.accuracy == pytest.approx(summary["end"]["shifted_accuracy"], abs=1e-6)
    assert (
        scored.samples == len(y["shifted_test"])
        and str(scored) in report.replace(f"{run / 'adapted.npz'} on torch-sim-fixed (", "")
        or f"accuracy {scored.accuracy:.1%}" in report
    )
    model_float = pn.evaluate(model, (x["clean_test"], y["clean_test"]), "torch-sim")
    counts = run_snntorch(model, x["clean_test"]).numpy()
    assert model_float.accuracy == pytest.approx(
        float((counts.argmax(1) == y["clean_test"]).mean()), abs=0.05
    )  # ties count as wrong here, argmax picks the first: a few samples apart at most

    _cli(capsys, "export", "--spec", run / "adapted.npz", "--to", "nir",
         "--out", tmp_path / "adapted.nir")  # fmt: skip
    adapted = NetworkSpec.load(run / "adapted.npz")
    back = read_nir(tmp_path / "adapted.nir")
    for name, value in adapted.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)


def _sinabs() -> object:
    """Sinabs, where installed (CI installs it: `pip install --no-deps sinabs pbr`, since its
    nir<=1.0.4 pin conflicts with this project's nir>=1.0.8, with which its import runs)."""
    import os

    try:
        import sinabs
    except ImportError:
        if os.environ.get("POLYSTEP_REQUIRE_SINABS") == "1":
            pytest.fail("POLYSTEP_REQUIRE_SINABS=1 but sinabs is not installed")
        pytest.skip("sinabs is not installed (pip install --no-deps sinabs pbr)")
    return sinabs


def sinabs_module(graph, batch_size: int, dv: float) -> torch.nn.Module:
    """A NIR graph in Sinabs 3.1.3, set to the graph's own semantics as docs/interop.md says:
    Sinabs reads a LIF's tau in time steps (decay exp(-1/tau)) and builds neurons that emit
    several spikes per step and reset by subtraction."""
    import math

    sinabs = _sinabs()  # skips (or fails under CI's POLYSTEP_REQUIRE_SINABS) before any import
    import sinabs.activation as sa
    import sinabs.layers as sl

    module = sinabs.from_nir(graph, batch_size=batch_size)
    for layer in module.modules():
        if isinstance(layer, sl.LIF):
            layer.spike_fn = sa.SingleSpike
            layer.reset_fn = sa.MembraneReset()
            with torch.no_grad():
                layer.tau_mem.data = torch.full_like(
                    layer.tau_mem, -1.0 / math.log(1.0 - dv), dtype=torch.float64
                )
    return module


def test_an_adapted_network_goes_back_to_snntorch_and_sinabs(trained, tmp_path: Path) -> None:
    """Drifted data alone adapts the hidden neurons' biases (the default); the adapted network
    (snnTorch's timing, the device's reset) exported to NIR loads in snnTorch and in Sinabs,
    which spike as the project's float simulator does."""
    from snntorch.import_nir import import_from_nir

    model, x, y = trained["model"], trained["x"], trained["y"]
    result = pn.adapt(model, "torch-sim", time_steps=T, train=(x["drifted"], y["drifted"]),
                      steps=8, progress=False)  # fmt: skip
    assert result.result.adapted == ("lif0.v_bias",)
    assert np.any(result.spec.layers[0].v_bias != 0)
    write_nir(result.spec, tmp_path / "adapted.nir")
    graph = read_nir_graph(tmp_path / "adapted.nir")
    assert all(np.all(graph.nodes[f"lif{i}"].v_leak == 0) for i in range(2))  # no v_leak
    spikes = x["shifted_test"]
    expected = _float_counts(result.spec, spikes)
    assert expected.sum() > 1000
    mine = import_from_nir(graph)
    counts = 0
    for sub in mine.modules():
        if isinstance(sub, (snn.Leaky, snn.Synaptic)):
            sub.reset_mem()
    with torch.no_grad():
        for t in range(T):
            out = mine(torch.as_tensor(spikes[:, t], dtype=torch.float32))
            counts = counts + (out[0] if isinstance(out, tuple) else out)
    np.testing.assert_array_equal(np.asarray(counts, dtype=np.int64), expected)
    sinabs_net = sinabs_module(graph, len(spikes), float(result.spec.layers[0].dv))
    flat = torch.as_tensor(spikes, dtype=torch.float32).reshape(len(spikes) * T, -1)
    out = sinabs_net(flat)
    out = out[0] if isinstance(out, tuple) else out
    got = out.detach().reshape(len(spikes), T, -1).sum(dim=1).numpy().astype(np.int64)
    np.testing.assert_array_equal(got, expected)
