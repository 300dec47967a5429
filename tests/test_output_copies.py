"""Output copies: a class counted over several output neurons (deploy's tie splitting).

The device runs every copy as a neuron of its own; the host's readout sums them.  These
tests pin the spec field, the readout around a backend, the copies deploy builds, and what
the exports do with them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from devices.readout import Readout, with_readout
from devices.registry import open_backend
from polystep_neuro.cli import main
from polystep_neuro.core.errors import DeviceError, SpecError
from polystep_neuro.core.network import NetworkSpec, class_counts
from polystep_neuro.run.interop.nir import to_nir
from polystep_neuro.run.output_copies import with_output_copies
from simulators.torch_lif import TorchLIF

T = 8


def _spec() -> NetworkSpec:
    return NetworkSpec.random([6, 5, 3], T, seed=1, bias=True)


def _inputs() -> np.ndarray:
    return (np.random.default_rng(0).random((9, T, 6)) < 0.5).astype(np.uint8)


def test_the_copies_travel_with_the_spec_and_the_device_runs_them_as_neurons(
    tmp_path: Path,
) -> None:
    copied = with_output_copies(_spec(), (0.0, 0.3))
    assert (copied.output_copies, copied.n_out, copied.n_classes) == (2, 6, 3)
    copied.save(tmp_path / "net.npz")
    again = NetworkSpec.load(tmp_path / "net.npz")
    assert again.output_copies == 2 and again.layers[-1].bias is None
    plain = again.device_network()
    assert plain.output_copies == 1 and plain.n_out == 6
    first = again.first_output_copy()
    assert first.n_out == 3 and first.output_copies == 1
    np.testing.assert_array_equal(first.layers[-1].weight, _spec().layers[-1].weight)
    counts = np.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(class_counts(counts, 2), [[3, 5, 7], [15, 17, 19]])
    everything = NetworkSpec.random([6, 5, 3], T, seed=1, bias=True, writable="all")
    names = with_output_copies(everything).writable
    assert "fc1.weight" in names and "fc1.bias" not in names  # folded into lif1.v_bias
    with pytest.raises(SpecError, match="only the output layer can hold copies"):
        NetworkSpec([replace(_spec().layers[0], copies=5), _spec().layers[1]], T).validate()
    with pytest.raises(SpecError, match="3 output neurons are not 2 copies"):
        NetworkSpec([_spec().layers[0], replace(_spec().layers[1], copies=2)], T).validate()


def test_the_readout_sums_a_class_over_its_copies_and_a_bare_backend_refuses() -> None:
    """Through the readout, a class's count is the sum of its copies' counts as the plain
    network runs them on the device (bit for bit, fixed point); a backend loaded with the
    copies directly refuses to answer instead of returning the copies' raw counts."""
    copied = with_output_copies(_spec(), (0.0, 0.3))
    x = _inputs()
    with open_backend("torch-sim-fixed", device="cpu") as bare:
        bare.load(copied.device_network())
        raw = torch.as_tensor(bare.evaluate({}, x))
        bare.load(copied)
        with pytest.raises(DeviceError, match="counts each class over 2 output neurons"):
            bare.evaluate({}, x)
    with with_readout(open_backend("torch-sim-fixed", device="cpu")) as backend:
        backend.load(copied)
        summed = torch.as_tensor(backend.evaluate({}, x))
        assert backend.spec.output_copies == 2 and backend.spec.layers[-1].fixed_scale
        assert backend.capabilities.name == "torch-sim-fixed"  # the rest is the backend's
    assert summed.shape == (1, 9, 3)
    assert torch.equal(summed, raw[..., :3] + raw[..., 3:])
    assert int((raw[..., 3:] - raw[..., :3]).sum()) > 0  # the raised copy fires more


def test_the_readout_sends_the_device_only_the_plain_network() -> None:
    """A remote server or the Lava env never sees copies (their wire has no such field)."""
    loaded: list[NetworkSpec] = []

    class Recorder:
        spec = None

        def load(self, spec: NetworkSpec) -> None:
            loaded.append(spec)
            self.spec = spec

    readout = Readout(Recorder())
    readout.load(with_output_copies(_spec()))
    assert [s.output_copies for s in loaded] == [1] and readout.spec.output_copies == 2
    assert with_readout(readout) is readout


def test_copy_zero_fires_as_the_original_neurons() -> None:
    spec = _spec()
    copied = with_output_copies(spec, (0.0, 0.3))
    x = _inputs()
    alone = TorchLIF(spec, "float32").evaluate({}, x).counts[0]
    both = TorchLIF(copied.device_network(), "float32").evaluate({}, x).counts[0]
    assert torch.equal(both[:, :3], alone)


def test_exports_say_what_the_outputs_are(tmp_path: Path, capsys) -> None:
    copied = with_output_copies(_spec())
    with pytest.raises(SpecError, match="a NIR graph cannot express: export spec.device_network"):
        to_nir(copied)
    copied.save(tmp_path / "net.npz")
    code = main(["export", "--spec", str(tmp_path / "net.npz"), "--to", "nir", "--out",
                 str(tmp_path / "net.nir")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "counts each class over 2 output neurons" in out
    assert "class c is the sum of outputs c, c + 3, ... (convert --nir reads the classes" in out
    assert "the graph holds Delay nodes" in out  # said before snnTorch's import refuses them
    # the round trip brings the classes back (convert --nir gave 6 outputs for 3 labels: 0 %)
    assert main(["convert", "--nir", str(tmp_path / "net.nir"), "--out",
                 str(tmp_path / "back.npz")]) == 0  # fmt: skip
    back = NetworkSpec.load(tmp_path / "back.npz")
    assert (back.output_copies, back.n_classes) == (2, 3)
    x = _inputs()
    same = [
        TorchLIF(net.device_network(), "float32").evaluate({}, x).counts for net in (copied, back)
    ]
    assert torch.equal(*same) and int(same[0].sum()) > 0


def test_check_compares_the_first_copy_per_layer_and_decides_on_the_sums() -> None:
    """`check --device-spec` on a network with doubled outputs: the output layer's row is
    each class's first copy against the model's neuron (equal counts where nothing else
    changed), the accuracy and ties are the device's decisions over the sums."""
    from polystep_neuro.run.parity import run_check

    spec = _spec()
    copied = with_output_copies(spec, (0.0, 0.3))
    x = _inputs()
    y = np.arange(9) % 3
    plain = run_check(spec, "torch-sim", x, y, device_spec=spec, torch_device="cpu")
    report = run_check(spec, "torch-sim", x, y, device_spec=copied, torch_device="cpu")
    assert [p.neurons for p in report.layers] == [5, 3]
    assert [p.equal for p in report.layers] == [p.equal for p in plain.layers] == [1.0, 1.0]
    with with_readout(open_backend("torch-sim", device="cpu")) as backend:
        backend.load(copied)
        summed = torch.as_tensor(backend.evaluate({}, x))[0]
    from polystep_neuro.run.losses import accuracy, decisions

    assert report.device_accuracy == pytest.approx(
        float(accuracy(summed[None], torch.as_tensor(y))[0])
    )
    assert report.device_ties == pytest.approx(float((decisions(summed) < 0).float().mean()))


def test_the_networks_one_line_says_its_output_copies() -> None:
    """repr showed 64 -> 128 -> 20 for a 10-class network deploy had doubled."""
    from polystep_neuro.run.output_copies import with_output_copies

    plain = NetworkSpec.random([6, 5, 3], 4, seed=0)
    assert "output neurons each" not in repr(plain)
    assert repr(with_output_copies(plain)).endswith(", 3 classes of 2 output neurons each)")
