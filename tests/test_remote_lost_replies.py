"""A client whose request the server never answers: a hello whose reply a timeout lost (the
retry must not open a second session), and an evaluate a restarted server forgot (the client
must notice within a ping's bound, not wait out its whole timeout).  The server is the real
request handler behind a scripted socket loop that drops or forgets what a test says."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import zmq

from devices.handler import DeviceServer
from devices.remote import RemoteBackend
from devices.server import split_envelope
from devices.torch_sim import TorchSimBackend
from polystep_neuro.core.network import NetworkSpec

WRITABLE = ("fc0.weight",)


def _handler() -> DeviceServer:
    return DeviceServer("torch-sim", lambda: TorchSimBackend("float32", "cpu"))


class Scripted:
    """A ROUTER loop in a thread that hands each request to a DeviceServer, except where
    ``script(op, n)`` (the op and how many of that op came before) says "drop" (handled,
    reply lost) or "restart" (a new DeviceServer: every session gone, this request lost)."""

    def __init__(self, script: Callable[[str, int], str]) -> None:
        self.script = script
        self.server = _handler()
        self.seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            envelope, body = split_envelope(self._sock.recv_multipart())
            op = json.loads(bytes(body[0]))["op"]
            n = self.seen.get(op, 0)
            self.seen[op] = n + 1
            action = self.script(op, n)
            if action == "restart":
                self.server = _handler()
                continue
            reply = self.server.handle(body)
            if action != "drop":
                self._sock.send_multipart(envelope + reply)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self._ctx.term()


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[str, int], str]], Scripted]]:
    made: list[Scripted] = []

    def make(script: Callable[[str, int], str]) -> Scripted:
        made.append(Scripted(script))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def _spec() -> NetworkSpec:
    return NetworkSpec.random([6, 10, 4], 8, seed=3, writable=WRITABLE)


def _batch(spec: NetworkSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    weight = spec.parameters()["fc0.weight"]
    params = {"fc0.weight": (weight + 0.4 * rng.standard_normal((3, *weight.shape))).astype("f4")}
    return params, (rng.random((4, 8, 6)) < 0.5).astype(np.uint8)


def test_a_retried_hello_opens_one_session(scripted) -> None:
    server = scripted(lambda op, n: "drop" if op == "hello" and n == 0 else "answer")
    remote = RemoteBackend(server.endpoint, timeout_s=5, connect_timeout_s=0.3, retries=3)
    try:
        assert server.seen["hello"] == 2  # the first reply was lost, the retry answered
        assert len(server.server.sessions) == 1
        spec = _spec()
        remote.load(spec)
        params, inputs = _batch(spec)
        local = TorchSimBackend("float32", "cpu")
        local.load(spec)
        np.testing.assert_array_equal(
            remote.evaluate(params, inputs), local.evaluate(params, inputs).numpy()
        )
    finally:
        remote.close()
    assert len(server.server.sessions) == 0  # closed: nothing left holding a slot


def test_a_restarted_server_is_noticed_within_a_ping_not_the_timeout(
    scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """The server restarts while an evaluate waits (the evaluate is lost with it): the
    client's pings in its session get "no such session", and it opens a new session,
    re-loads and evaluates again, seconds before its 30 s timeout would have ended."""
    server = scripted(lambda op, n: "restart" if op == "evaluate" and n == 0 else "answer")
    remote = RemoteBackend(server.endpoint, timeout_s=30, connect_timeout_s=0.5, retries=2)
    spec = _spec()
    params, inputs = _batch(spec)
    local = TorchSimBackend("float32", "cpu")
    local.load(spec)
    try:
        remote.load(spec)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="devices.remote"):
            counts = remote.evaluate(params, inputs)
        took = time.monotonic() - start
    finally:
        remote.close()
    np.testing.assert_array_equal(counts, local.evaluate(params, inputs).numpy())
    assert took < 5.0, took
    assert server.seen["evaluate"] == 2 and server.seen["load"] == 2
    assert "this server holds no session" in caplog.text and "re-loading" in caplog.text


def test_a_busy_server_is_waited_for(scripted) -> None:
    """Pings that a busy server has not answered yet are no verdict: the client waits on
    (here the server answers the evaluate after 1.5 s, three pings' bounds)."""

    def slow(op: str, n: int) -> str:
        if op == "evaluate":
            time.sleep(1.5)
        return "answer"

    server = scripted(slow)
    remote = RemoteBackend(server.endpoint, timeout_s=30, connect_timeout_s=0.5, retries=2)
    spec = _spec()
    params, inputs = _batch(spec)
    try:
        remote.load(spec)
        counts = remote.evaluate(params, inputs)
    finally:
        remote.close()
    local = TorchSimBackend("float32", "cpu")
    local.load(spec)
    np.testing.assert_array_equal(counts, local.evaluate(params, inputs).numpy())
    assert server.seen["evaluate"] == 1 and server.seen["ping"] >= 2


def test_a_new_client_waits_for_a_busy_server_it_reached(scripted) -> None:
    """A student's hello queued behind another's long evaluate failed after 3 tries of the
    10 s first-contact bound, whatever --timeout said; a server whose connection handshake
    succeeded is there, so hello now waits up to timeout_s (here 2 s busy, bound 0.5 s)."""

    def busy(op: str, n: int) -> str:
        if op == "hello" and n == 0:
            time.sleep(2.0)  # another client's evaluate ahead of this hello
        return "answer"

    server = scripted(busy)
    start = time.monotonic()
    remote = RemoteBackend(server.endpoint, timeout_s=10, connect_timeout_s=0.5, retries=3)
    try:
        assert time.monotonic() - start < 5.0
        assert server.seen["hello"] == 1 and len(server.server.sessions) == 1
    finally:
        remote.close()
