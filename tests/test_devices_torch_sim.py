"""The torch-sim backend through the device contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devices.catalog import ALL_PARAMETERS
from devices.registry import open_backend
from polystep_neuro.core.contract import Backend, Capabilities
from polystep_neuro.core.errors import (
    DeviceError,
    DeviceUnavailable,
    SpecError,
    UnknownBackend,
    error_from_name,
)
from polystep_neuro.core.network import NetworkSpec
from simulators.torch_lif import TorchLIF


@pytest.fixture()
def spec() -> NetworkSpec:
    return NetworkSpec.random([8, 12, 3], 10, seed=4, writable=("fc1.weight", "lif1.vth"))


def _inputs(b: int = 5) -> np.ndarray:
    return (np.random.default_rng(0).random((b, 10, 8)) < 0.5).astype(np.float32)


def test_contract_and_capabilities(spec: NetworkSpec) -> None:
    with open_backend("torch-sim", device="cpu") as backend:
        assert isinstance(backend, Backend)
        backend.load(spec)
        caps = backend.capabilities
        assert caps.name == "torch-sim" and caps.precision == "float32"
        assert caps.writable == ALL_PARAMETERS and not caps.is_remote
        assert caps.can_write("lif1.vth") and caps.can_write("fc0.bias")
        assert Capabilities.from_json(caps.to_json()) == caps
        w = np.stack([spec.layers[1].weight * s for s in (0.5, 1.0, 2.0)])
        counts = backend.evaluate({"fc1.weight": w}, _inputs())
        assert counts.shape == (3, 5, 3)
        direct = TorchLIF(spec).evaluate({"fc1.weight": w}, _inputs()).counts
        assert torch.equal(counts, direct)


def test_chunked_evaluation_equals_one_piece(spec: NetworkSpec) -> None:
    rng = np.random.default_rng(1)
    w = (spec.layers[1].weight + rng.normal(0, 0.5, size=(9, 3, 12))).astype(np.float32)
    whole = open_backend("torch-sim", device="cpu")
    whole.load(spec)
    tiny = open_backend("torch-sim", device="cpu", chunk_elements=10 * 5 * 12 * 2)
    tiny.load(spec)
    assert torch.equal(
        whole.evaluate({"fc1.weight": w}, _inputs()), tiny.evaluate({"fc1.weight": w}, _inputs())
    )


def test_fixed_backend_calibrates(spec: NetworkSpec) -> None:
    backend = open_backend("torch-sim-fixed", device="cpu")
    backend.load(spec)
    assert backend.capabilities.precision == "loihi-fixed"
    assert all(layer.fixed_scale is not None for layer in backend.spec.layers)


def test_errors(spec: NetworkSpec) -> None:
    backend = open_backend("torch-sim", device="cpu")
    with pytest.raises(DeviceError, match="call load"):
        backend.evaluate({}, _inputs())
    backend.load(spec)
    with pytest.raises(SpecError, match="not writable"):
        backend.evaluate({"fc0.weight": np.zeros((1, 12, 8))}, _inputs())
    backend.close()
    with pytest.raises(DeviceError, match="closed"):
        backend.evaluate({}, _inputs())
    with pytest.raises(DeviceUnavailable, match="unknown backend 'tpu'; choose one of: torch-sim"):
        open_backend("tpu")
    with pytest.raises(UnknownBackend) as typo:  # a typo says so, and is a ValueError
        open_backend("torch-sm")
    assert isinstance(typo.value, ValueError)
    assert error_from_name("UnknownBackend", "x").__class__ is UnknownBackend  # over the wire
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            open_backend("torch-sim", device="cuda")


def test_graded_inputs_on_fixed_point_name_a_value_and_the_remedy() -> None:
    """Float-valued spikes on loihi-fixed said only 'must be binary spikes': the message now
    shows one offending value and the two ways on."""
    backend = open_backend("torch-sim-fixed", device="cpu")
    backend.load(NetworkSpec.random([8, 4, 2], 5, seed=0))
    x = np.zeros((2, 5, 8), np.float32)
    x[1, 2, 3] = 0.37
    with pytest.raises(SpecError, match=r"binary spikes \(0 or 1\), these are not, e\.g\. 0\.37: "
                       r"rate-code .* or run a float backend \(torch-sim\)"):  # fmt: skip
        backend.evaluate({}, x)
    backend.close()
