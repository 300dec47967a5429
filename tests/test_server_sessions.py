"""Sessions of a device server, request by request (no sockets, a clock the test moves):
limits on sessions and on network size, idle expiry with a typed error, Busy naming who
holds the device, and a fuzz over the message schema that must get a typed error in
bounded time and leave every other session as it was."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.handler import DeviceServer
from devices.protocol import PROTOCOL_VERSION, decode, encode
from devices.sessions import SessionLimits
from devices.torch_sim import TorchSimBackend
from polystep_neuro.core.network import NetworkSpec

WRITABLE = ("fc0.weight", "lif1.v_bias")


class Clock:
    """time.monotonic, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _server(clock: Clock, **limits: Any) -> DeviceServer:
    return DeviceServer(
        "torch-sim",
        lambda: TorchSimBackend("float32", "cpu"),
        sessions=SessionLimits(**limits),
        clock=clock,
    )


def _call(server: DeviceServer, op: str, arrays: dict | None = None, **fields: Any) -> tuple:
    frames = [bytes(memoryview(f)) for f in encode({"op": op, "id": 1, **fields}, arrays)]
    return decode(server.handle(frames), reply=True)


def _spec(seed: int) -> NetworkSpec:
    return NetworkSpec.random([6, 10, 4], 8, seed=seed, writable=WRITABLE)


def _open(server: DeviceServer, client: str, spec: NetworkSpec | None = None) -> str:
    header, _ = _call(server, "hello", client=client)
    assert "error" not in header, header
    if spec is not None:
        meta, arrays = spec.to_arrays()
        header, _ = _call(server, "load", arrays, spec=meta, session=header["session"])
        assert "error" not in header, header
    return header["session"] if spec is None else _sid(server, client)


def _sid(server: DeviceServer, client: str) -> str:
    return next(s.id for s in server.sessions if s.client == client)


def _inputs(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((3, 8, 6)) < 0.5).astype(np.uint8)


def _counts(server: DeviceServer, session: str) -> tuple[dict, dict]:
    return _call(server, "evaluate", {"inputs": _inputs()}, session=session)


def _error(reply: tuple[dict, dict]) -> tuple[str, str]:
    error = reply[0]["error"]
    return error["type"], error["message"]


# --------------------------------------------------------------------------- lifecycle
def test_an_idle_session_expires_with_a_typed_error_and_frees_its_network() -> None:
    clock = Clock()
    server = _server(clock, idle_s=60.0)
    sid = _open(server, "alice", _spec(1))
    (session,) = list(server.sessions)
    backend = session.backend
    assert backend is not None and "error" not in _counts(server, sid)[0]
    clock.now += 59.0
    assert "error" not in _counts(server, sid)[0]  # a request resets the idle clock
    clock.now += 61.0
    server.expire_idle()  # what the serve loop does while it waits
    assert len(server.sessions) == 0 and backend._closed
    kind, message = _error(_counts(server, sid))
    assert kind == "SessionExpired"
    assert message == (
        f"session {sid[:8]} expired after 60 s without a request (the server's "
        "--session-idle-s) and its network was dropped: open a new session (hello) and load "
        "again"
    )
    kind, message = _error(_counts(server, "ab" * 16))
    assert kind == "SessionError" and message.startswith("this server holds no session abababab")
    header, _ = _call(server, "hello", session=sid)  # an expired session: a new one
    assert header["session"] != sid and header["server"]["loaded"] is False


def test_a_full_server_is_busy_and_names_who_holds_it() -> None:
    clock = Clock()
    server = _server(clock, max_sessions=2, idle_s=600.0)
    alice = _open(server, "alice@lab pid 1", _spec(1))
    bob = _open(server, "bob@lab pid 2")  # opened, nothing loaded yet
    clock.now += 5.0
    carol = _open(server, "carol@lab pid 3")  # takes the slot bob holds without a network
    assert _error(_counts(server, bob))[0] == "SessionError"
    meta, arrays = _spec(2).to_arrays()
    assert "error" not in _call(server, "load", arrays, spec=meta, session=carol)[0]
    clock.now += 3.0
    kind, message = _error(_call(server, "hello", client="dave@lab pid 4"))
    assert kind == "Busy"
    assert message == (
        "device server busy: all 2 session slots are held: session "
        f"{alice[:8]} of 'alice@lab pid 1', holding a 6-10-4, T=8 network, last request 8 s "
        f"ago; session {carol[:8]} of 'carol@lab pid 3', holding a 6-10-4, T=8 network, last "
        "request 3 s ago. A slot "
        "frees when its client closes or after 600 s without a request; try again then, or "
        "use another server. A client that was killed never closes its slot: restarting the "
        "server frees it at once (a shorter --session-idle-s frees such slots sooner)"
    )
    assert _call(server, "close", session=alice)[0]["closed"] is True
    dave = _open(server, "dave@lab pid 4", _spec(3))
    assert {s.client for s in server.sessions} == {"carol@lab pid 3", "dave@lab pid 4"}
    assert "error" not in _counts(server, dave)[0]


def test_one_slot_server_says_the_device_is_held() -> None:
    server = _server(Clock(), max_sessions=1)
    sid = _open(server, "alice", _spec(1))
    kind, message = _error(_call(server, "hello", client="bob"))
    assert kind == "Busy"
    assert message.startswith(f"device server busy: the device is held by session {sid[:8]} of")


def test_a_network_over_the_session_limit_is_refused() -> None:
    server = _server(Clock(), session_bytes=256)
    sid = _open(server, "alice")
    meta, arrays = _spec(1).to_arrays()
    kind, message = _error(_call(server, "load", arrays, spec=meta, session=sid))
    assert kind == "CapacityError"
    assert "over the server's per-session limit of 0.000244141 MiB (--session-mb)" in message
    assert _error(_counts(server, sid))[0] == "NotLoadedError"


def test_sessions_keep_their_own_networks() -> None:
    server = _server(Clock())
    a, b = _open(server, "a", _spec(1)), _open(server, "b", _spec(2))
    for sid, spec in ((a, _spec(1)), (b, _spec(2))):
        with TorchSimBackend("float32", "cpu") as local:
            local.load(spec)
            want = local.evaluate({}, _inputs()).numpy()
        np.testing.assert_array_equal(_counts(server, sid)[1]["counts"], want)


# --------------------------------------------------------------------------- the fuzz
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.integers(-3, 3), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_DTYPES = st.sampled_from(["<f4", "<f8", "|u1", "|b1", "|i1", "<i4", "<i8"])


@st.composite
def _requests(draw: st.DrawFn, session: str) -> tuple[list[bytes], str]:
    """A request built from the schema with one part broken: a header field, a layer field
    of a load's spec, or an array's dtype, shape or name."""
    op = draw(st.sampled_from(["hello", "load", "evaluate", "ping", "close", "launch"]))
    meta, arrays = _spec(5).to_arrays()
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": op, "id": 7, "session": session}
    out: dict[str, np.ndarray] = dict(arrays) if op == "load" else {}
    if op == "load":
        header["spec"] = meta
    if op == "evaluate":
        out = {"fc0.weight": np.zeros((2, 10, 6), np.float32), "inputs": _inputs()}
    where = draw(st.sampled_from(["header", "layer", "spec", "array"]))
    if where == "header":
        key = draw(st.sampled_from(["v", "op", "id", "session", "client", "spec", "arrays"]))
        header[key] = draw(_VALUES)
    elif where in ("layer", "spec") and op == "load":
        target = meta["layers"][draw(st.integers(0, 1))] if where == "layer" else meta
        key = draw(st.sampled_from(sorted(target) + ["unknown"]))
        target[key] = draw(_VALUES)
    elif out:
        name = draw(st.sampled_from(sorted(out)))
        value = out.pop(name)
        shape = draw(st.lists(st.integers(0, 12), min_size=0, max_size=4))
        dtype = np.dtype(draw(_DTYPES))
        renamed = draw(st.sampled_from([name, name + "x", "inputs", "fc9.weight"]))
        out[renamed] = np.zeros(shape if draw(st.booleans()) else value.shape, dtype)
    descriptors = [
        {"name": k, "dtype": v.dtype.str, "shape": list(v.shape)} for k, v in out.items()
    ]
    try:
        head = json.dumps({**header, "arrays": descriptors}).encode()
    except (TypeError, ValueError):
        head = b"{}"
    return [head, *(v.tobytes() for v in out.values())], op


KNOWN = {
    "ProtocolError",
    "SpecError",
    "NotLoadedError",
    "SessionError",
    "SessionExpired",
    "CapacityError",
    "Busy",
}


def test_a_fuzz_over_the_message_schema_gets_typed_errors_fast_and_changes_no_one() -> None:
    """Every malformed request: a reply within 0.5 s, an error of a known type (or a
    success where the change was harmless), and the other session's counts unchanged."""
    server = _server(Clock(), max_sessions=4)
    other = _open(server, "bystander", _spec(1))
    reference = _counts(server, other)[1]["counts"]
    fuzzed = _open(server, "fuzzer", _spec(5))
    slowest = [0.0]

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_requests(fuzzed))
    def check(request: tuple[list[bytes], str]) -> None:
        frames, op = request
        start = time.perf_counter()
        header, _ = decode(server.handle(frames), reply=True)
        slowest[0] = max(slowest[0], time.perf_counter() - start)
        if "error" in header:
            assert header["error"]["type"] in KNOWN, header
            assert "\n" not in header["error"]["message"]
        np.testing.assert_array_equal(_counts(server, other)[1]["counts"], reference)
        assert len(server.sessions) <= 4

    check()
    assert slowest[0] < 0.5, f"slowest request {slowest[0]:.3f} s"


def test_a_retried_hello_gets_the_session_its_first_try_opened() -> None:
    """A client whose hello timed out while the server was busy sends it again; the server
    reads both, and the second must not open a session of its own (on a one-slot server it
    would hold the device until it expired)."""
    clock = Clock()
    server = _server(clock, max_sessions=1, idle_s=600.0)
    token = "5e" * 16
    first, _ = _call(server, "hello", client="alice", token=token)
    meta, arrays = _spec(1).to_arrays()
    assert "error" not in _call(server, "load", arrays, spec=meta, session=first["session"])[0]
    clock.now += 2.0
    again, _ = _call(server, "hello", client="alice", token=token)
    assert again["session"] == first["session"] and again["server"]["loaded"] is True
    assert len(server.sessions) == 1
    assert _error(_call(server, "hello", client="bob", token="b0" * 16))[0] == "Busy"
    # closed, the token opens a new session; a malformed token is refused in one line
    assert _call(server, "close", session=first["session"])[0]["closed"] is True
    fresh, _ = _call(server, "hello", client="alice", token=token)
    assert fresh["session"] != first["session"]
    kind, message = _error(_call(server, "hello", client="carol", token="not hex"))
    assert (kind, message) == (
        "ProtocolError",
        "'token' must be a hex string of 1-64 digits, got 'not hex'",
    )


def test_bad_requests_are_logged_with_the_sender_at_most_ten_a_minute(caplog) -> None:
    """A peer sending junk must not bury the log: ten lines a minute, each naming the
    sender's address, then one line counting the rest."""
    import logging

    clock = Clock()
    server = _server(clock)
    with caplog.at_level(logging.WARNING, logger="devices.handler"):
        for _ in range(25):
            server.handle([b"not json"], peer="10.0.0.7")
        clock.now += 61.0
        server.handle([b"not json"], peer="10.0.0.8")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 12
    assert all(line.startswith("bad request from 10.0.0.7 (id=None") for line in lines[:10])
    assert lines[10] == "15 more bad requests in the 60 s before (not logged one by one)"
    assert lines[11].startswith("bad request from 10.0.0.8")


def test_busy_names_where_the_holder_connected_from() -> None:
    """Students may share a user and a host: Busy names the holder's address and key file."""
    server = _server(Clock(), max_sessions=1)
    frames = [bytes(memoryview(f)) for f in encode({"op": "hello", "id": 1, "client": "alice"})]
    header, _ = decode(server.handle(frames, peer="10.0.0.7, key alice.key"), reply=True)
    meta, arrays = _spec(1).to_arrays()
    assert "error" not in _call(server, "load", arrays, spec=meta, session=header["session"])[0]
    kind, message = _error(_call(server, "hello", client="bob"))
    assert kind == "Busy" and f"session {header['session'][:8]} of 'alice' (10.0.0.7, key " \
        "alice.key), holding a 6-10-4, T=8 network" in message  # fmt: skip
