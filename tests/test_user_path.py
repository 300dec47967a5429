"""The snnTorch user's path, end to end: train with BPTT, hand the model over, adapt on a
fixed-point device to drifted data, and take it back — through the one-call API and through
the CLI pipeline (convert -> adapt -> evaluate -> export), with identical spike counts at each
hand-over that keeps the arithmetic (module -> spec, spec -> NIR -> spec, adapted spec ->
the user's own module)."""

from __future__ import annotations

import copy
import functools
import json
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

    # Hand-over 3: the adapted weights in the user's own module (whatever its names).
    mine = copy.deepcopy(model)
    result.load_into(mine)
    np.testing.assert_array_equal(mine[0].weight.detach().numpy(), result.spec.layers[0].weight)
    np.testing.assert_array_equal(
        run_snntorch(mine, x["shifted_test"]).numpy(),
        _float_counts(result.spec, x["shifted_test"]),
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
         "--out", tmp_path / "spec.npz")  # fmt: skip
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
    assert f"accuracy {summary['end']['shifted_accuracy']:.2%}" in report

    _cli(capsys, "export", "--spec", run / "adapted.npz", "--to", "nir",
         "--out", tmp_path / "adapted.nir")  # fmt: skip
    adapted = NetworkSpec.load(run / "adapted.npz")
    back = read_nir(tmp_path / "adapted.nir")
    for name, value in adapted.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)
