"""Device server + RemoteBackend: hostile requests, parity with local torch-sim, faults."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zmq

from devices.base import BaseBackend
from devices.catalog import ALL_PARAMETERS
from devices.handler import DeviceServer
from devices.protocol import (
    PROTOCOL_VERSION,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
)
from devices.remote import RemoteBackend
from devices.security import host_problem, is_local_endpoint
from devices.spawn import ServerProcess, start_server_process
from devices.torch_sim import TorchSimBackend
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import CapacityError, DeviceError, DeviceUnavailable, SpecError
from polystep_neuro.core.network import NetworkSpec

ROOT = Path(__file__).resolve().parents[1]
WRITABLE = ("fc0.weight", "fc1.weight", "lif1.vth")


def _spec() -> NetworkSpec:
    return NetworkSpec.random([8, 12, 3], 10, seed=4, writable=WRITABLE)


def _params(spec: NetworkSpec, num_sets: int = 4, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.writable_shapes().items():
        base = spec.parameters()[name]
        noise = rng.normal(0, 0.4, size=(num_sets, *shape))
        out[name] = (base + noise).astype(np.float32)
    out["lif1.vth"] = np.abs(out["lif1.vth"]) + 0.2
    return out


def _inputs(batch: int = 5, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((batch, 10, 8)) < 0.5).astype(np.float32)


def _local_counts(precision: str, params: dict, inputs: np.ndarray) -> np.ndarray:
    local = TorchSimBackend(precision=precision, device="cpu")
    local.load(_spec())
    return local.evaluate(params, inputs).numpy()


def _start(backend: str = "torch-sim", **kw: Any) -> ServerProcess:
    kw.setdefault("exit_on_close", False)
    return start_server_process(
        backend, extra_args=["--device", "cpu"], cwd=str(ROOT), startup_timeout_s=60, **kw
    )


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = _start()
    yield proc
    assert proc.process.poll() is None, "the server died: " + proc.stderr_tail()
    proc.process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert proc.process.wait(10) == 0  # SIGTERM: clean exit, code 0, quickly
    assert time.monotonic() - start < 3.0


def _raw(endpoint: str, frames: list[Any]) -> tuple[dict, dict]:
    """One request on a fresh raw REQ socket; the reply must come within 10 s."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames, copy=False)
        assert sock.poll(10_000), "server did not reply"
        return decode(sock.recv_multipart(copy=False), reply=True)
    finally:
        sock.close()


def _request(endpoint: str, op: str, arrays: dict | None = None, **fields: Any) -> tuple:
    return _raw(endpoint, encode({"op": op, "id": 1, **fields}, arrays))


def _head(**fields: Any) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "op": "ping", "id": 3, **fields}).encode()


def _assert_serving(endpoint: str) -> None:
    header, _ = _request(endpoint, "ping")
    assert header["pong"] is True and "error" not in header


# ----------------------------------------------------------------------- hostile requests
F4 = {"name": "x", "dtype": "<f4", "shape": [4]}
BAD_REQUESTS = [
    ([_head(arrays=[F4]), b"x" * 10], "= 16 bytes, but its frame holds 10 bytes"),
    ([_head(arrays=[F4])], "declares 1 array(s) but the message has 0 data frame"),
    ([_head(arrays=[F4]), b"x" * 17], "but its frame holds 17 bytes"),
    ([_head(arrays=[{**F4, "dtype": "float33"}]), b"x" * 16], "dtype 'float33', which is not"),
    ([_head(arrays=[{**F4, "dtype": "O"}]), b"x" * 32], "dtype 'O', which is not allowed"),
    ([_head(arrays=[{**F4, "dtype": ">f4"}]), b"x" * 16], "dtype '>f4', which is not allowed"),
    ([_head(arrays=[{**F4, "shape": [10**6, 10**6]}]), b"x"], "over the per-array limit"),
    ([_head(arrays=[{**F4, "shape": [10**12]}]), b"x"], "= 4000000000000 bytes, over"),
    ([b"{oops"], "header is not valid JSON"),
    ([b'"just a string"'], "header must be a JSON object, got str"),
    ([b"\x80\x81"], "header is not UTF-8"),
    ([_head(v=PROTOCOL_VERSION + 1)], f"unsupported protocol version {PROTOCOL_VERSION + 1}"),
    ([_head(op="launch")], "unknown op 'launch'"),
    ([json.dumps({"v": PROTOCOL_VERSION, "id": 3}).encode()], "missing the 'op' field"),
    ([json.dumps({"op": "ping", "id": 3}).encode()], "missing the protocol version field"),
    ([_head(arrays=[{"name": "x", "shape": [1]}]), b"x" * 4], "missing the 'dtype' field"),
    ([_head(op="load")], "load needs the 'session' that hello returned"),
    ([_head(op="evaluate", session="not hex")], "'session' must be the hex id hello returned"),
    ([_head(op="hello", arrays=[F4]), b"x" * 16], "hello takes no arrays, got x"),
]


@pytest.mark.parametrize(("frames", "message"), BAD_REQUESTS)
def test_bad_requests_get_protocol_error_replies(
    server: ServerProcess, frames: list[bytes], message: str
) -> None:
    header, arrays = _raw(server.endpoint, frames)
    assert header["error"]["type"] == "ProtocolError"
    assert message in header["error"]["message"]
    assert arrays == {}
    _assert_serving(server.endpoint)


def test_request_id_is_echoed_on_errors(server: ServerProcess) -> None:
    header, _ = _raw(server.endpoint, [_head(id="req-9", op="launch")])
    assert header["id"] == "req-9" and header["error"]["type"] == "ProtocolError"


def test_evaluate_before_load_and_bad_evaluates(server: ServerProcess) -> None:
    ep = server.endpoint
    session = _request(ep, "hello")[0]["session"]  # a new session holds no network
    inputs = _inputs().astype(np.uint8)
    header, _ = _request(ep, "evaluate", {"inputs": inputs}, session=session)
    assert header["error"]["type"] == "NotLoadedError"
    assert "this session holds no network" in header["error"]["message"]
    header, _ = _request(ep, "load", session=session)
    assert header["error"]["type"] == "ProtocolError"
    assert "load needs a 'spec' object" in header["error"]["message"]
    meta, arrays = _spec().to_arrays()
    header, _ = _request(ep, "load", arrays, spec={**meta, "format": 99}, session=session)
    assert header["error"]["type"] == "SpecError"
    assert "unsupported spec format 99" in header["error"]["message"]
    header, _ = _request(ep, "load", arrays, spec={**meta, "layers": "nope"}, session=session)
    assert header["error"]["type"] == "SpecError"
    header, out = _request(ep, "load", arrays, spec=meta, session=session)
    assert "error" not in header and header["capabilities"]["writable"] == list(ALL_PARAMETERS)
    np.testing.assert_array_equal(out["fc0.weight"], arrays["fc0.weight"])
    cases = [
        ({}, "ProtocolError", "evaluate needs an 'inputs' array"),
        ({"inputs": inputs.astype(np.int64)}, "ProtocolError", "must be one of bool, uint8"),
        ({"inputs": inputs[:, :4]}, "SpecError", "inputs must have shape (B, 10, 8)"),
        ({"fc9.weight": np.zeros((2, 3), np.float32), "inputs": inputs}, "SpecError", "fc9"),
    ]
    for arrays_in, kind, message in cases:
        header, _ = _request(ep, "evaluate", arrays_in, session=session)
        assert header["error"]["type"] == kind, header
        assert message in header["error"]["message"]
    header, out = _request(ep, "evaluate", {"inputs": inputs}, session=session)
    assert out["counts"].dtype == np.int32 and out["counts"].shape == (1, 5, 3)


# ----------------------------------------------------------------------- server logic
class _Fake(BaseBackend):
    """A backend whose evaluate fails in a chosen way."""

    name = "fake"

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.error = error

    def load(self, spec: NetworkSpec) -> None:
        self._spec = spec

    def evaluate(self, params: Any, inputs: Any) -> Any:
        if self.error is not None:
            raise self.error
        return torch.ones((1, inputs.shape[0], 3), dtype=torch.float32)


def _handle(server: DeviceServer, op: str, arrays: dict | None = None, **fields: Any) -> tuple:
    frames = [bytes(memoryview(f)) for f in encode({"op": op, "id": 1, **fields}, arrays)]
    return decode(server.handle(frames), reply=True)


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        (RuntimeError("kaboom"), "DeviceError", "RuntimeError: kaboom"),
        (CapacityError("too many cores"), "CapacityError", "too many cores"),
        (ZeroDivisionError("x"), "DeviceError", "ZeroDivisionError: x"),
        (None, None, None),
    ],
)
def test_server_turns_backend_failures_into_typed_replies(
    error: Exception | None, kind: str | None, message: str | None
) -> None:
    made: list[_Fake] = []

    def factory() -> _Fake:
        made.append(_Fake(error))
        return made[-1]

    server = DeviceServer("fake", factory, exit_on_close=True)
    assert len(made) == 1  # made at once: a backend that cannot start fails the server's start
    session = _handle(server, "hello")[0]["session"]
    meta, arrays = _spec().to_arrays()
    assert "error" not in _handle(server, "load", arrays, spec=meta, session=session)[0]
    inputs = {"inputs": _inputs().astype(np.uint8)}
    header, out = _handle(server, "evaluate", inputs, session=session)
    if kind is None:  # float torch counts come back as int32 numpy
        assert out["counts"].dtype == np.int32 and out["counts"].tolist() == [[[1] * 3] * 5]
    else:
        assert header["error"] == {"type": kind, "message": message}
    header, _ = _handle(server, "close", session=session)
    assert header["closed"] is True and header["exiting"] is True and server.should_exit
    assert made[1]._closed and len(made) == 2  # the session's own backend, closed with it
    header, _ = _handle(server, "hello")  # a new session: a fresh backend at its first load
    assert header["server"]["loaded"] is False and header["session"] != session
    assert header["limits"] == Limits().to_json()
    assert "error" not in _handle(server, "load", arrays, spec=meta, session=header["session"])[0]
    assert len(made) == 3 and not made[2]._closed


# ----------------------------------------------------------------------- remote parity
def test_remote_counts_equal_local_float32(server: ServerProcess) -> None:
    spec = _spec()
    params, inputs = _params(spec), _inputs()
    with RemoteBackend(server.endpoint, timeout_s=20) as remote:
        caps = remote.capabilities
        assert caps.name == "torch-sim" and caps.precision == "float32" and caps.is_remote
        assert caps.address == server.endpoint and caps.device == "PyTorch LIF simulator on CPU"
        assert caps.describe() == f"PyTorch LIF simulator on CPU at {server.endpoint}"
        assert remote.server_info["backend"] == "torch-sim"
        assert remote.ping() < 5.0
        remote.load(spec)
        assert remote.capabilities.writable == ALL_PARAMETERS
        expected = _local_counts("float32", params, inputs)
        got = remote.evaluate(params, inputs)
        assert got.dtype == np.int32 and got.shape == (4, 5, 3) and got.flags.writeable
        np.testing.assert_array_equal(got, expected)
        assert expected.sum() > 0  # a test that can fail: counts are not all zero
        # torch tensors in, graded (non-binary) inputs travel as float32
        as_torch = {k: torch.as_tensor(v) for k, v in params.items()}
        np.testing.assert_array_equal(remote.evaluate(as_torch, torch.as_tensor(inputs)), got)
        graded = inputs * 0.7
        np.testing.assert_array_equal(
            remote.evaluate(params, graded), _local_counts("float32", params, graded)
        )
        # a batch over the server's message limits is split along V, in order
        remote._limits = Limits(max_array_bytes=2 * 12 * 8 * 4, max_total_bytes=1 << 20)
        np.testing.assert_array_equal(remote.evaluate(params, inputs), expected)
        # inputs alone over the limit: CapacityError before sending, with or without params
        remote._limits = Limits(max_array_bytes=399, max_total_bytes=1 << 20)
        for sets in (params, {}):
            with pytest.raises(CapacityError, match=r"inputs take 400 bytes, over what"):
                remote.evaluate(sets, inputs)  # (5, 10, 8) spikes as uint8: 400 bytes
        remote._limits = Limits()
        with pytest.raises(SpecError, match="not writable"):
            remote.evaluate({"lif0.vth": np.ones((2,), np.float32)}, inputs)


def test_a_network_with_output_copies_loads_remotely_as_locally(server: ServerProcess) -> None:
    """What `deploy` writes (output copies) failed over tcp:// with the server's
    "layer 1 has unknown field(s) ['copies']"; now the client sends the device network and
    says at evaluate what a local backend says, and the host's readout works through it."""
    from devices.readout import with_readout
    from polystep_neuro.run.output_copies import with_output_copies

    spec = with_output_copies(NetworkSpec.random([8, 12, 3], 10, seed=4, writable=("fc0.weight",)))
    params, inputs = {"fc0.weight": _params(_spec())["fc0.weight"]}, _inputs()
    local = TorchSimBackend(precision="float32", device="cpu")
    local.load(spec)
    with RemoteBackend(server.endpoint, timeout_s=20) as remote:
        remote.load(spec)
        assert remote.spec.output_copies == 2 and remote.spec.n_out == 6
        with pytest.raises(DeviceError) as raised:
            remote.evaluate(params, inputs)
        with pytest.raises(DeviceError) as said_locally:
            local.evaluate(params, inputs)
        assert str(raised.value).split(": ", 1)[1] == str(said_locally.value).split(": ", 1)[1]
    readout = with_readout(local)
    readout.load(spec)
    expected = readout.evaluate(params, inputs)
    with with_readout(RemoteBackend(server.endpoint, timeout_s=20)) as read:
        read.load(spec)
        got = read.evaluate(params, inputs)
    np.testing.assert_array_equal(got, np.asarray(expected))
    assert got.shape == (4, 5, 3) and got.sum() > 0


def test_inputs_for_the_wire() -> None:
    """Binary spikes travel as uint8 (4x smaller than float32), anything else as float32."""
    spec = _spec()

    def wire(x: np.ndarray) -> np.ndarray:
        return CheckedBatch.check(spec, {}, x).for_wire().inputs

    spikes = _inputs()
    assert wire(spikes).dtype == np.uint8
    np.testing.assert_array_equal(wire(spikes), spikes)
    assert wire(spikes * 0.5).dtype == np.float32
    assert wire(spikes > 0).dtype == np.bool_
    assert wire(spikes.astype(np.float64) * 0.5).dtype == np.float32
    assert wire(torch.as_tensor(spikes)).dtype == np.uint8


def test_fixed_point_parity_kill_restart_and_exit_on_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One private torch-sim-fixed server through its life (one test: spawns are slow)."""
    spec = _spec()
    params, inputs = _params(spec, num_sets=3, seed=2), _inputs(batch=4, seed=3)
    first = _start("torch-sim-fixed", exit_on_close=True)
    restarted: list[ServerProcess] = []
    # a long bound while the server is up (a loaded 2-core machine compiles slowly), a short
    # one once it is killed
    remote = RemoteBackend(first.endpoint, timeout_s=60, connect_timeout_s=5, retries=2)
    try:
        # parity: exactly the counts of a local backend, and its calibrated spec
        remote.load(spec)
        assert remote.capabilities.precision == "loihi-fixed"
        local = TorchSimBackend(precision="loihi-fixed", device="cpu")
        local.load(spec)
        scales = [layer.fixed_scale for layer in remote.spec.layers]
        assert None not in scales
        assert scales == [layer.fixed_scale for layer in local.spec.layers]
        expected = local.evaluate(params, inputs).numpy()
        assert expected.sum() > 0
        np.testing.assert_array_equal(remote.evaluate(params, inputs), expected)
        with pytest.raises(SpecError, match="binary spikes"):
            remote.evaluate(params, inputs * 0.5)

        # a killed server: DeviceUnavailable within a bounded time, saying what to check
        first.process.kill()
        first.process.wait(10)
        remote.timeout_s = 0.5
        start = time.monotonic()
        with pytest.raises(DeviceUnavailable) as info:
            remote.evaluate(params, inputs)
        assert time.monotonic() - start < 4.0
        message = str(info.value)
        assert first.endpoint in message and "2 tries of 0.5 s" in message
        assert "Check that the server is running" in message

        # restarted on the same port while the client is retrying: re-load, same counts
        spawner = threading.Thread(
            target=lambda: restarted.append(
                _start("torch-sim-fixed", bind=first.endpoint, exit_on_close=True)
            )
        )
        remote.timeout_s, remote.retries = 1.0, 40
        spawner.start()
        with caplog.at_level(logging.WARNING, logger="devices.remote"):
            after = remote.evaluate(params, inputs)
        spawner.join(60)
        np.testing.assert_array_equal(after, expected)
        assert "re-loading" in caplog.text and "no reply from" in caplog.text
        assert restarted[0].endpoint == first.endpoint

        # close() ends a private server (--exit-on-close); the client is then closed
        remote.close()
        assert restarted[0].process.wait(10) == 0
        with pytest.raises(DeviceError, match="closed"):
            remote.evaluate(params, inputs)
    finally:
        remote.close()
        for proc in (first, *restarted):
            proc.stop()


def test_unreachable_endpoint_fails_fast_at_open() -> None:
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable, match="did not answer 'hello': 2 tries of 0.3 s"):
        RemoteBackend("tcp://127.0.0.1:9", connect_timeout_s=0.3, retries=2)
    assert time.monotonic() - start < 2.0
    with pytest.raises(DeviceUnavailable, match="expected tcp://HOST:PORT"):
        RemoteBackend("127.0.0.1:5555")
    # a host name that does not resolve is said at once (it read as no reply after 30 s)
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable, match=r"address 'tcp://nosuchhost\.invalid:5555': "
                       r"the host name 'nosuchhost\.invalid' does not resolve"):  # fmt: skip
        RemoteBackend("tcp://nosuchhost.invalid:5555")
    assert time.monotonic() - start < 5.0
    assert host_problem("tcp://localhost:5555") == host_problem("tcp://[::1]:5555") == ""


# ----------------------------------------------------------------------- startup
@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:0", "tcp://*:0", "tcp://192.0.2.1:5555"])
def test_public_bind_refused_without_insecure(bind: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devices.server", "--backend", "torch-sim", "--bind", bind],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "refusing to bind" in result.stderr
    assert "needs CurveZMQ keys (--curve-keys DIR" in result.stderr
    assert "devices keygen" in result.stderr and "--insecure" in result.stderr


def test_loopback_detection() -> None:
    for ep in ("tcp://127.0.0.1:1", "tcp://localhost:2", "tcp://[::1]:3", "ipc:///tmp/x"):
        assert is_local_endpoint(ep), ep
    for ep in ("tcp://0.0.0.0:1", "tcp://*:2", "tcp://eth0:3", "tcp://10.0.0.1:4", "udp://x:1"):
        assert not is_local_endpoint(ep), ep


@pytest.mark.skipif(importlib.util.find_spec("lava") is not None, reason="lava is installed")
def test_lava_backend_outside_the_lava_env_is_a_clear_startup_error() -> None:
    with pytest.raises(DeviceUnavailable) as info:
        start_server_process("lava-fixed", cwd=str(ROOT), startup_timeout_s=60)
    message = str(info.value)
    # The server's own reason, not a wrapped traceback or exit code.
    assert message.startswith("backend 'lava-fixed' needs the Lava env")
    assert "needs the Lava env" in message and "polystep-neuro devices setup-lava" in message


def test_protocol_error_is_a_device_error() -> None:
    assert issubclass(ProtocolError, DeviceError) and issubclass(NotLoadedError, DeviceError)
