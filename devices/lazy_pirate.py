"""LazyPirate: the retrying request client of a device server (zguide's "lazy pirate").

One REQ socket; a request is sent and its reply awaited for a bounded time; on timeout the
socket is closed (linger 0), reopened and the request sent again, a bounded number of
times.  Reopening is what makes a retry safe on REQ: the reply to the abandoned try can
never arrive on the new socket.  The caller's requests must be safe to repeat (a device
server's are: ``evaluate`` is pure, ``load`` and ``close`` idempotent).

A ``HandshakeWatch`` (``devices.security``) on each socket ends a wait at once when the
server refuses the client's keys, and says why a reply never came.  A ``Probe`` ends a long
wait early when the server has lost the request: a server restarted mid-request never
answers it, and without the probe its client would wait the whole timeout (minutes on a
slow device) before retrying.  Not thread-safe: one socket, one request at a time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from devices.security import ClientKeys, HandshakeWatch, secure_client_socket
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable

__all__ = ["LazyPirate", "Probe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """While a request waits: every ``every_s`` seconds a short request (the message
    ``frames``) on a second socket.  A server serves requests in arrival order, so the
    probe's reply comes after the request's, unless the server no longer has the request
    (it restarted); ``verdict`` turns the probe's reply into the error that ends the wait,
    or None (wait on).  An unanswered probe (the server is busy, or gone) is sent again."""

    frames: Sequence[Any]
    verdict: Callable[[list[Any]], BaseException | None]
    every_s: float


class LazyPirate:
    """Requests to one endpoint: send, await the reply, reopen and resend on timeout."""

    def __init__(self, endpoint: str, keys: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self.keys = keys
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._watch = HandshakeWatch(keys)

    @property
    def closed(self) -> bool:
        return self._ctx.closed

    def request(
        self,
        frames: Sequence[Any],
        *,
        timeout_s: float,
        tries: int,
        what: str,
        probe: Probe | None = None,
        connected_s: float | None = None,
    ) -> list[Any]:
        """The reply's frames; DeviceUnavailable when ``tries`` tries of ``timeout_s`` each
        got none, or at once when the server refused this client's keys; ``probe``'s error
        as soon as its verdict says the server lost the request.  ``connected_s``: a try
        whose connection's handshake succeeded waits that long instead (a server busy with
        another client's long request answers a short one late, but it is there)."""
        hint = ""
        start = time.monotonic()
        for attempt in range(1, tries + 1):
            sock = self._socket(timeout_s)
            try:
                sock.send_multipart(frames, copy=False)
                reply = self._await_reply(sock, timeout_s, probe, connected_s)
                if reply is not None:
                    return reply
            except zmq.Again:
                pass
            except BaseException:  # e.g. Ctrl-C mid-wait: a REQ socket left waiting is unusable
                self.drop()
                raise
            hint = self._watch.hint() or hint
            if self._watch.fatal:
                self.drop()  # a key problem: more tries would be refused the same way
                raise DeviceUnavailable(
                    f"device server {self.endpoint} refused the connection ({what!r} not sent): "
                    f"{hint}."
                )
            log.warning(
                "no reply from %s to %s within %.1f s (try %d of %d)%s%s",
                self.endpoint,
                what,
                timeout_s,
                attempt,
                tries,
                f": {hint}" if hint else "",
                "; reconnecting" if attempt < tries else "",
            )
            self.drop()
        raise self._unanswered(what, tries, timeout_s, time.monotonic() - start, hint)

    def _unanswered(
        self, what: str, tries: int, timeout_s: float, took_s: float, hint: str
    ) -> DeviceUnavailable:
        """The error for a request no try got an answer to: what the handshakes said, or
        the list of things to check."""
        why = (
            f"{hint}."
            if hint
            else (
                f"Check that the server is running (python -m devices.server --backend NAME "
                f"--bind {self.endpoint}), that the host, port and any ssh tunnel are right, "
                f"that both sides agree on CurveZMQ keys ({self._keys_note()}), and for a slow "
                f"device allow longer answers (--timeout SECONDS; timeout_s= from Python): a "
                f"server answers one request at a time, so one busy with another client's long "
                f"evaluate answers late too"
            )
        )
        return DeviceUnavailable(
            f"device server {self.endpoint} did not answer {what!r}: {tries} tries of "
            f"{timeout_s:g} s each, {took_s:.1f} s in all. {why}"
        )

    def _keys_note(self) -> str:
        if self.keys is None:
            return "this client uses none; a server started with --curve-keys needs them"
        return f"this client uses the keys from {self.keys.source}"

    def _await_reply(
        self,
        sock: zmq.Socket,
        timeout_s: float,
        probe: Probe | None = None,
        connected_s: float | None = None,
    ) -> list[Any] | None:
        """The reply frames within ``timeout_s`` (``connected_s`` once the handshake
        succeeded), or None (also as soon as the watch sees the handshake refused); raises
        ``probe``'s verdict when it is an error."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        self._watch.register(poller)
        now = time.monotonic()
        start = now
        deadline = now + timeout_s
        next_probe = now + probe.every_s if probe is not None else math.inf
        probing: zmq.Socket | None = None
        try:
            while (left := deadline - now) > 0:
                wait = min(left, next_probe - now)
                ready = dict(poller.poll(max(1, math.ceil(wait * 1000))))
                if sock in ready:
                    return sock.recv_multipart(copy=False)
                if self._watch.read(ready):
                    return None
                now = time.monotonic()
                if connected_s is not None and self._watch.connected:
                    deadline = max(deadline, start + connected_s)
                if probe is None:
                    continue
                if probing is not None and probing in ready:
                    verdict = probe.verdict(probing.recv_multipart(copy=False))
                    self._end_probe(poller, probing)
                    probing = None
                    if verdict is not None:
                        raise verdict
                if now >= next_probe:  # unanswered so far (busy, or gone): ask again
                    if probing is not None:
                        self._end_probe(poller, probing)
                    probing = self._connect(probe.every_s)
                    probing.send_multipart(probe.frames, copy=False)
                    poller.register(probing, zmq.POLLIN)
                    next_probe = now + probe.every_s
            return None
        finally:
            if probing is not None:
                self._end_probe(poller, probing)

    @staticmethod
    def _end_probe(poller: zmq.Poller, probing: zmq.Socket) -> None:
        poller.unregister(probing)
        probing.close(linger=0)

    def _socket(self, timeout_s: float) -> zmq.Socket:
        if self._ctx.closed:
            raise DeviceError(f"connection to {self.endpoint} is closed")
        if self._sock is None:
            self._sock = self._connect(timeout_s, watched=True)
        return self._sock

    def _connect(self, timeout_s: float, watched: bool = False) -> zmq.Socket:
        """A new REQ socket to the endpoint (linger 0, keys when the client has them)."""
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        sock.setsockopt(zmq.IPV6, int("[" in self.endpoint))
        if self.keys is not None:
            secure_client_socket(sock, self.keys)
        if watched:
            self._watch.attach(sock)
        sock.connect(self.endpoint)
        return sock

    def drop(self) -> None:
        """Close the socket (linger 0); the next request opens a fresh one."""
        if self._sock is not None:
            self._watch.detach(self._sock)
            self._sock.close(linger=0)
            self._sock = None

    def close(self) -> None:
        self.drop()
        if not self._ctx.closed:
            self._ctx.term()
