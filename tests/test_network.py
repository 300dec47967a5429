"""NetworkSpec validation and its .npz format."""

from __future__ import annotations

import numpy as np
import pytest

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec


def _spec() -> NetworkSpec:
    return NetworkSpec.random([5, 4, 3], 8, seed=1, bias=True, writable=("fc1.weight", "lif1.vth"))


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    spec = _spec()
    spec.layers[0].fixed_scale, spec.layers[0].fixed_weight_exp = 12.5, -1
    path = tmp_path / "net.npz"
    spec.save(path)
    back = NetworkSpec.load(path)
    assert back.writable == spec.writable and back.num_steps == 8
    for name, value in spec.parameters().items():
        assert np.array_equal(back.parameters()[name], value), name
    assert back.layers[0].fixed_scale == 12.5 and back.layers[0].fixed_weight_exp == -1
    with np.load(path, allow_pickle=False) as data:  # readable without pickle
        assert "__meta__" in data.files


def test_param_names_and_shapes() -> None:
    shapes = _spec().param_shapes()
    assert shapes["fc0.weight"] == (4, 5) and shapes["fc1.bias"] == (3,)
    assert shapes["lif1.vth"] == () and shapes["lif0.v_bias"] == (4,)


def test_with_params_replaces_one_set() -> None:
    spec = _spec()
    new = spec.with_params({"lif1.vth": 2.5, "fc1.weight": np.ones((3, 4))})
    assert new.layers[1].vth == 2.5 and float(new.layers[1].weight.sum()) == 12.0
    assert spec.layers[1].vth == 1.0  # the original is untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: setattr(s.layers[1], "weight", np.ones((3, 7))), "fc1.weight has 7 inputs"),
        (lambda s: setattr(s.layers[0], "du", 1.5), r"lif0.du must be a number in \[0, 1\]"),
        (lambda s: setattr(s.layers[0], "vth", float("nan")), "lif0.vth must be a finite"),
        (lambda s: s.layers[0].weight.__setitem__((0, 0), np.nan), "fc0.weight contains 1 non"),
        (lambda s: setattr(s.layers[0], "reset", "soft"), "reset must be one of"),
        (lambda s: setattr(s.layers[0], "delay", 2), "delay must be 0"),
        (lambda s: setattr(s, "num_steps", 2), "must exceed the total synaptic delay"),
        (lambda s: setattr(s, "writable", ("fc7.weight",)), "unknown parameter name 'fc7.weight'"),
        (lambda s: setattr(s.layers[0], "bias", np.ones(9)), r"fc0.bias must have shape \(4,\)"),
    ],
)
def test_validation_names_the_problem(change, message) -> None:
    spec = _spec()
    change(spec)
    with pytest.raises(SpecError, match=message):
        spec.validate()


def test_leaky_requires_du_one() -> None:
    with pytest.raises(SpecError, match="du must be 1"):
        NetworkSpec([LayerSpec(weight=np.ones((2, 2)), du=0.5, neuron="leaky")], 4).validate()


def test_load_errors_are_spec_errors(tmp_path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        NetworkSpec.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(SpecError, match="is not a polystep-neuro spec"):
        NetworkSpec.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.ones(3))
    with pytest.raises(SpecError, match="is not a polystep-neuro spec"):
        NetworkSpec.load(other)


@pytest.mark.parametrize("name", ["model.nir", "graph.h5"])
def test_loading_a_nir_file_as_a_spec_names_the_convert_command(tmp_path, name) -> None:
    """Without nir or h5py: a .nir name or HDF5's signature is enough to say what to do."""
    path = tmp_path / name
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64) if name.endswith(".h5") else b"x" * 64)
    with pytest.raises(SpecError) as info:
        NetworkSpec.load(path)
    what = "a NIR graph" if name.endswith(".nir") else "an HDF5 file (a NIR graph, or a lava-dl"
    assert str(info.value).startswith(f"{path} is {what}")
    assert f"convert a NIR graph first: polystep-neuro convert --nir {path} --out net.npz" in str(
        info.value
    )
