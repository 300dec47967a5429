"""The device contract, once, for every backend.

Each backend is opened as a user would (``open_backend``), loaded with one network and held
for the module: torch-sim and torch-sim-fixed in process, a remote device server (a thread
server hosting torch-sim-fixed), two servers sharded (torch-sim), Ray (a local Ray of 2
CPUs, two torch-sim-fixed actors), lava and lava-fixed (the Lava env), and loihi2 with
Loihi2SimCfg injected (``tests.loihi2_sim_server`` in the Lava env, reached over the wire).
Without Ray or the Lava env their cases skip, unless POLYSTEP_REQUIRE_RAY=1 /
POLYSTEP_REQUIRE_LAVA=1 (CI), where that is a failure.

Every case compares against the in-process torch simulator of the backend's precision:
fixed point must be bit-identical with torch-sim-fixed, float32 torch backends identical
with torch-sim, and Lava's float64 models (``lava``) must agree on nearly every count.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from devices.base import BaseBackend
from devices.catalog import ALL_PARAMETERS, RECORDS, lava_record
from devices.registry import backend_options, open_backend
from devices.torch_sim import TorchSimBackend
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators.lava_plan import RUNTIME_WRITABLE
from tests._servers import ThreadServer

WRITABLE = ("fc1.weight", "lif1.v_bias")  # writable on every backend (Lava fixes vth)
SIZES, STEPS = [8, 12, 3], 10
FLOAT_AGREEMENT = 0.95  # lava (float64) vs torch-sim (float32); see test_lava_backend.py


@dataclass
class Kind:
    """One backend as the contract suite sees it."""

    label: str
    name: str  # what open_backend is given (an address for remote/sharded)
    precision: str
    record: str  # its catalog record
    torch_counts: bool = False  # counts come back as a torch tensor (in-process torch-sim)
    lava: bool = False  # needs the Lava env
    ray: bool = False  # needs Ray
    exact: bool = True  # counts bit-identical with the reference
    binary_only: bool = False  # refuses graded (non-0/1) inputs
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return "torch-sim-fixed" if self.precision == "loihi-fixed" else "torch-sim"


KINDS = [
    Kind("torch-sim", "torch-sim", "float32", "torch-sim", torch_counts=True),
    Kind(
        "torch-sim-fixed",
        "torch-sim-fixed",
        "loihi-fixed",
        "torch-sim-fixed",
        torch_counts=True,
        binary_only=True,
    ),
    Kind("remote", "<thread server>", "loihi-fixed", "remote", binary_only=True),
    Kind("sharded", "<two thread servers>", "float32", "sharded"),
    Kind("ray", "ray:torch-sim-fixed", "loihi-fixed", "ray", ray=True, binary_only=True),
    Kind("lava", "lava", "float32", "lava", lava=True, exact=False, binary_only=True),
    Kind("lava-fixed", "lava-fixed", "loihi-fixed", "lava-fixed", lava=True, binary_only=True),
    Kind("loihi2", "loihi2", "loihi-fixed", "loihi2", lava=True, binary_only=True),
]


def _require(kind: Kind) -> None:
    if kind.ray and importlib.util.find_spec("ray") is None:
        if os.environ.get("POLYSTEP_REQUIRE_RAY") == "1":
            pytest.fail("POLYSTEP_REQUIRE_RAY=1 but Ray is not installed")
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')
    if kind.lava:
        from devices.lava_env import find_lava_env

        if find_lava_env() is None:
            message = "no Lava env: run `polystep-neuro devices setup-lava`"
            if os.environ.get("POLYSTEP_REQUIRE_LAVA") == "1":
                pytest.fail(f"POLYSTEP_REQUIRE_LAVA=1 but {message}")
            pytest.skip(message)


def _spec() -> NetworkSpec:
    return NetworkSpec.random(SIZES, STEPS, seed=4, du=0.5, weight_gain=3.0, writable=WRITABLE)


def _params(num_sets: int, seed: int = 1) -> dict[str, np.ndarray]:
    spec, rng = _spec(), np.random.default_rng(seed)
    base = spec.parameters()
    return {
        "fc1.weight": (
            base["fc1.weight"] * (1 + 0.4 * rng.standard_normal((num_sets, 3, 12)))
        ).astype(np.float32),
        "lif1.v_bias": rng.normal(0.0, 0.3, (num_sets, 3)).astype(np.float32),
    }


def _inputs(batch: int = 4, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((batch, STEPS, SIZES[0])) < 0.5).astype(np.float32)


def _reference(kind: Kind, params: dict[str, Any], inputs: Any) -> np.ndarray:
    with TorchSimBackend(RECORDS[kind.reference].precision or "", "cpu") as local:
        local.load(_spec())
        return local.evaluate(params, inputs).numpy()


def _numpy(counts: Any) -> np.ndarray:
    return counts.numpy() if isinstance(counts, torch.Tensor) else counts


def _assert_counts(kind: Kind, got: Any, want: np.ndarray) -> None:
    got = _numpy(got)
    assert got.shape == want.shape
    if kind.exact:
        np.testing.assert_array_equal(got, want)
    else:
        assert (got == want).mean() >= FLOAT_AGREEMENT, (got, want)


# --------------------------------------------------------------------------- opening
class _Opened:
    """A kind's backend and whatever must be stopped with it."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._stops: list[Callable[[], None]] = []
        self.backend = self.open()

    def open(self) -> BaseBackend:
        kind = self.kind
        if kind.label == "remote":
            return open_backend(self._thread_servers("torch-sim-fixed", 1)[0], timeout_s=60)
        if kind.label == "sharded":
            return open_backend(self._thread_servers("torch-sim", 2), timeout_s=60)
        if kind.label == "loihi2":  # the loihi2 backend, on Lava's CPU models, over the wire
            return open_backend(self._loihi2_sim_server(), timeout_s=600, connect_timeout_s=60)
        if kind.ray:
            return open_backend(kind.name, workers=2, cpus_per_worker=0.25, num_cpus=2)
        if kind.lava:
            return open_backend(kind.name)
        return open_backend(kind.name, device="cpu")

    def _thread_servers(self, backend: str, count: int) -> list[str]:
        if not hasattr(self, "_servers"):
            self._servers = [ThreadServer(backend) for _ in range(count)]
            self._stops += [server.stop for server in self._servers]
        return [server.endpoint for server in self._servers]

    def _loihi2_sim_server(self) -> str:
        if not hasattr(self, "_loihi2"):
            from devices.lava import spawn_server
            from devices.lava_env import find_lava_env, venv_python

            venv = find_lava_env()
            assert venv is not None
            self._loihi2 = spawn_server(
                venv_python(venv), "loihi2", module="tests.loihi2_sim_server"
            )
            self._stops.append(lambda: self._loihi2.stop_group(grace_s=10.0))
        return self._loihi2.endpoint

    def close(self) -> None:
        self.backend.close()
        for stop in self._stops:
            stop()


@pytest.fixture(scope="module", params=KINDS, ids=[k.label for k in KINDS])
def opened(request: pytest.FixtureRequest) -> Iterator[_Opened]:
    """Each kind opened and loaded once for the module (Lava and Ray start slowly)."""
    _require(request.param)
    held = _Opened(request.param)
    try:
        held.backend.load(_spec())
        yield held
    finally:
        held.close()


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("kind", KINDS, ids=[k.label for k in KINDS])
def test_unknown_options_are_refused_listing_the_accepted(kind: Kind) -> None:
    """Refused before anything starts (no server contacted, no Ray, no Lava process)."""
    name = {"remote": "tcp://127.0.0.1:9", "sharded": "tcp://127.0.0.1:9,tcp://127.0.0.1:10"}
    record = RECORDS[kind.record]
    with pytest.raises(DeviceError) as info:
        open_backend(name.get(kind.label, kind.name), devcie="cpu")
    assert type(info.value) is DeviceError
    message = str(info.value)
    assert message.startswith(f"the {record.name} backend takes no option 'devcie'; it accepts: ")
    assert f"it accepts: {', '.join(record.options)}" in message


def test_contradictory_options_fail_loudly() -> None:
    with pytest.raises(DeviceError, match=r"torch-sim-fixed backend takes no option 'precision'"):
        open_backend("torch-sim-fixed", precision="float32")
    with pytest.raises(DeviceError, match=r"^the remote backend takes no option 'devcie'; it "):
        open_backend("tcp://127.0.0.1:9", devcie="cuda")
    with pytest.raises(DeviceError, match=r"the remote backend takes no option 'device'.*--device"):
        open_backend("tcp://127.0.0.1:9", device="cuda")  # the server chose its device
    with pytest.raises(DeviceError, match=r"the lava-fixed backend takes no option 'device'"):
        open_backend("lava-fixed", device="cpu")


def test_backend_options_keeps_what_each_backend_takes() -> None:
    offered = {"device": "cpu", "timeout_s": 5.0, "retries": None}
    assert backend_options("torch-sim", **offered) == {"device": "cpu"}
    assert backend_options("ray:torch-sim", **offered) == {"device": "cpu"}
    assert backend_options("lava-fixed", **offered) == {"timeout_s": 5.0}
    assert backend_options("tcp://h:1", **offered) == {"timeout_s": 5.0}  # None: left out
    assert backend_options("tcp://h:1,tcp://h:2", **offered) == {"timeout_s": 5.0}
    assert RECORDS["torch-sim"].takes_device and not RECORDS["remote"].takes_device


def test_options_are_described_once_in_the_records() -> None:
    """No constructor re-declares an option of its record (so the two cannot drift): a
    backend built directly gets the record's defaults and refuses what the record does not
    list, as open_backend does.  Lava's writable kinds are what its graphs rewrite."""
    from devices.lava import LavaBackend
    from devices.remote import RemoteBackend
    from devices.sharded import ShardedBackend

    def declared(cls: type) -> set[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    for cls, record in (
        (TorchSimBackend, "torch-sim"),
        (LavaBackend, "lava"),
        (RemoteBackend, "remote"),
        (ShardedBackend, "sharded"),
    ):
        assert declared(cls) & set(RECORDS[record].options) == set(), cls
    if importlib.util.find_spec("ray") is not None:
        from devices.ray_backend import RayBackend

        assert declared(RayBackend) & set(RECORDS["ray"].options) == set()
    local = TorchSimBackend("loihi-fixed", "cpu")  # device by position, as before
    assert local.chunk_elements == RECORDS["torch-sim"].options["chunk_elements"].default
    assert local.chunk_elements == 1 << 27 and local.device == torch.device("cpu")
    assert (local.name, local.precision) == ("torch-sim-fixed", "loihi-fixed")
    with pytest.raises(DeviceError) as info:
        TorchSimBackend("float32", bogus=1)
    assert str(info.value).startswith(
        "the torch-sim backend takes no option 'bogus'; it accepts: device, chunk_elements"
    )
    remote = RemoteBackend("tcp://127.0.0.1:9", connect=False)
    defaults = RECORDS["remote"].options.defaults()
    got = (remote.timeout_s, remote.connect_timeout_s, remote.retries)
    assert got == (defaults["timeout_s"], defaults["connect_timeout_s"], defaults["retries"])
    assert got == (60.0, 10.0, 3)
    remote.close()
    for mode, attrs in RUNTIME_WRITABLE.items():
        assert {k.split(".")[1] for k in lava_record(mode).writable} == set(attrs)
    assert lava_record("loihi2").writable == lava_record("fixed_pt").writable


# --------------------------------------------------------------------------- evaluate
def test_capabilities(opened: _Opened) -> None:
    kind, caps = opened.kind, opened.backend.capabilities
    assert caps.precision == kind.precision
    # what the device reached can rewrite: a server, a shard set or Ray actors say so for it
    assert caps.writable == (RECORDS[kind.record].writable or RECORDS[kind.reference].writable)
    assert caps.can_write("fc1.weight") and caps.can_write("lif0.v_bias")
    assert caps.can_write("lif1.vth") == (kind.precision == "float32" or not kind.lava)
    assert caps.max_sets is None or caps.max_sets >= 1
    assert Capabilities.from_json(caps.to_json()) == caps
    # where the device is reached is a field of its own, not part of its description
    assert (caps.address != "") == (kind.label in ("remote", "sharded", "loihi2"))
    if kind.label != "sharded":  # (a shard set names each server: one may be down)
        assert "tcp://" not in caps.device
    if caps.address:
        assert caps.address.startswith("tcp://127.0.0.1:") and caps.is_remote


def test_counts_match_the_reference(opened: _Opened) -> None:
    kind, params, x = opened.kind, _params(3), _inputs()
    counts = opened.backend.evaluate(params, x)
    if kind.torch_counts:
        assert isinstance(counts, torch.Tensor) and counts.dtype == torch.int32
        assert counts.device == torch.device("cpu")  # the simulator's device
    else:
        assert isinstance(counts, np.ndarray) and counts.dtype == np.int32
        assert counts.flags.writeable
    want = _reference(kind, params, x)
    assert want.shape == (3, 4, 3) and want.sum() > 0 and (want != want[:1]).any()
    _assert_counts(kind, counts, want)


def test_parameters_not_given_keep_their_loaded_values(opened: _Opened) -> None:
    kind, x, loaded = opened.kind, _inputs(), _spec().parameters()
    only_weights = {"fc1.weight": _params(2)["fc1.weight"]}
    got = opened.backend.evaluate(only_weights, x)
    spelled_out = {**only_weights, "lif1.v_bias": np.stack([loaded["lif1.v_bias"]] * 2)}
    _assert_counts(kind, got, _reference(kind, spelled_out, x))
    if kind.exact:
        np.testing.assert_array_equal(_numpy(got), _numpy(opened.backend.evaluate(spelled_out, x)))


def test_empty_params_run_the_loaded_network(opened: _Opened) -> None:
    kind, x, loaded = opened.kind, _inputs(), _spec().parameters()
    got = opened.backend.evaluate({}, x)
    assert _numpy(got).shape == (1, 4, 3)
    as_loaded = {name: loaded[name][None] for name in WRITABLE}
    _assert_counts(kind, got, _reference(kind, as_loaded, x))


def test_binary_inputs_as_uint8_bool_float_and_torch(opened: _Opened) -> None:
    params, x = _params(2, seed=3), _inputs(batch=3, seed=5)
    want = _numpy(opened.backend.evaluate(params, x))
    for same in (x.astype(np.uint8), x.astype(bool), torch.as_tensor(x)):
        np.testing.assert_array_equal(_numpy(opened.backend.evaluate(params, same)), want)


def test_graded_inputs(opened: _Opened) -> None:
    kind, params, x = opened.kind, _params(2), _inputs() * 0.5
    if kind.binary_only:
        with pytest.raises(SpecError, match="binary") as info:
            opened.backend.evaluate(params, x)
        assert type(info.value) is SpecError  # raised on the device side, typed here
    else:
        _assert_counts(kind, opened.backend.evaluate(params, x), _reference(kind, params, x))


def test_typed_errors_cross_every_boundary(opened: _Opened) -> None:
    """Bad calls fail with the type and message the in-process backend gives, and the
    backend keeps working afterwards."""
    kind, backend, x = opened.kind, opened.backend, _inputs()
    local = TorchSimBackend(RECORDS[kind.reference].precision or "", "cpu")
    local.load(_spec())
    bad_calls = [
        ({"fc1.weight": np.zeros((2, 3, 11), np.float32)}, x),  # wrong shape
        ({"fc0.weight": np.zeros((2, 12, 8), np.float32)}, x),  # not writable
        ({"fc1.weight": np.zeros((2, 3, 12), np.float32), "lif1.v_bias": np.zeros((3, 3))}, x),
        ({}, x[:, :4]),  # inputs of the wrong length
        ({"fc9.weight": np.zeros((1, 3), np.float32)}, x),  # unknown name
    ]
    for params, inputs in bad_calls:
        with pytest.raises(SpecError) as want:
            local.evaluate(params, inputs)
        with pytest.raises(SpecError) as got:
            backend.evaluate(params, inputs)
        assert type(got.value) is SpecError and str(got.value) == str(want.value)
    refused = NetworkSpec.random(SIZES, STEPS, seed=4, reset="subtract", writable=WRITABLE)
    if kind.precision == "loihi-fixed" or kind.lava:  # float torch-sim runs snnTorch resets
        with pytest.raises(SpecError) as info:
            backend.load(refused)
        assert type(info.value) is SpecError and "reset" in str(info.value)
        backend.load(_spec())
    _assert_counts(kind, backend.evaluate(_params(1), x), _reference(kind, _params(1), x))


def test_closed_backend(opened: _Opened) -> None:
    """A closed backend refuses every call with DeviceError; closing twice is harmless.
    (Opens a second backend of the kind: the module's one stays open.)"""
    second = _Opened(opened.kind)
    try:
        second.backend.load(_spec())
    finally:
        second.close()
    second.backend.close()
    for call in (
        lambda: second.backend.evaluate(_params(1), _inputs()),
        lambda: second.backend.load(_spec()),
    ):
        with pytest.raises(DeviceError, match="closed") as info:
            call()
        assert type(info.value) is DeviceError


def test_spikes_reach_a_served_backend_as_uint8() -> None:
    """Binary float32 spikes cross the wire as uint8 and reach the hosted backend so."""
    with ThreadServer("torch-sim-fixed") as server:
        seen: list[Any] = []
        with open_backend(server.endpoint) as remote:
            remote.load(_spec())
            (session,) = list(server.server.sessions)  # this client's, holding its backend
            hosted = session.backend
            assert hosted is not None
            real = hosted.run_batch

            def spy(batch: Any) -> Any:
                seen.append(batch.inputs.dtype)
                return real(batch)

            hosted.run_batch = spy  # type: ignore[method-assign]
            params, x = _params(2), _inputs()
            np.testing.assert_array_equal(
                remote.evaluate(params, x), _reference(KINDS[1], params, x)
            )
    assert seen == [np.dtype(np.uint8)]
    assert ALL_PARAMETERS == RECORDS["torch-sim-fixed"].writable


def test_capabilities_from_an_older_server() -> None:
    """A v1 server that still sends ``max_vertices`` (and no ``address``) is read fine."""
    old = {"name": "lava-fixed", "precision": "loihi-fixed", "max_vertices": 8, "writable": []}
    caps = Capabilities.from_json(old)
    assert caps.max_sets == 8 and caps.address == "" and caps.describe() == ""
    new = Capabilities("remote", "float32", 4, ALL_PARAMETERS, True, "sim", "tcp://h:1")
    assert Capabilities.from_json(new.to_json()) == new
    assert new.describe() == "sim at tcp://h:1" and "max_vertices" not in new.to_json()
