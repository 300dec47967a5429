"""RemoteBackend: the device contract over the wire protocol, to a ``devices.server``.

Requests use ZeroMQ's "lazy pirate" pattern: a REQ socket, a timeout per try, and on
timeout the socket is closed (linger 0), reopened and the request resent — safe because
``evaluate`` is pure and ``load``/``close`` are idempotent.  If a restarted server answers
that it holds no network, the client re-sends the spec it loaded and retries the evaluate,
so a server restart mid-run costs one re-load, not the run.  With ``heartbeat_s`` an
evaluate after a quiet spell is preceded by a cheap ``ping`` (short timeout), so a dead
server or tunnel is found in ``connect_timeout_s`` rather than a full evaluate timeout,
and a restarted one is re-loaded before the (large) evaluate request goes out.

With ``curve_keys`` (a folder from ``polystep-neuro devices keygen`` or a mapping) the
socket encrypts, presents the client key and pins the server key.  A socket monitor
watches the handshakes, so "no reply" can say *why* (key rejected, keys missing,
wrong server key) instead of only "is the server running?".

Batches larger than the server's message limits (learned from ``hello``) or its
``max_sets`` are split along V and the counts concatenated in order.  A batch is checked
once, against the loaded spec, before anything is sent; binary spikes travel as uint8.

Host-side module, but torch-free at import: tensors are converted with
``.detach().cpu().numpy()`` where they arrive.  Not thread-safe (one REQ socket).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from devices.base import BaseBackend
from devices.protocol import (
    DEFAULT_LIMITS,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
    error_from_wire,
)
from devices.security import (
    FATAL_HANDSHAKE_EVENTS,
    HANDSHAKE_EVENTS,
    ClientKeys,
    client_keys,
    handshake_hint,
    secure_client_socket,
)
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import CapacityError, DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec

log = logging.getLogger(__name__)

_HEADER_ALLOWANCE = 64 * 1024  # bytes kept free for the JSON header when splitting batches


class RemoteBackend(BaseBackend):
    """A backend served by ``python -m devices.server`` at ``endpoint`` (tcp://host:port)."""

    is_remote = True

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 1.0,
        retries: int = 3,
        connect: bool = True,
        curve_keys: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        """``timeout_s`` bounds one try of load/evaluate (make it exceed the slowest
        evaluate); ``connect_timeout_s`` one try of hello/ping; ``retries`` is the number
        of tries.  With ``connect`` the server is asked for its capabilities now, so an
        unreachable endpoint fails here rather than at the first evaluate.
        ``curve_keys``: client key folder or mapping (``open_backend`` fills it in from
        $POLYSTEP_CURVE_KEYS; this class does not, so a private loopback server such as
        the one devices.lava spawns is never asked for keys).  ``heartbeat_s``: ping first
        when nothing was heard for that long (off by default: a ping queues behind another
        client's evaluate on a shared server)."""
        super().__init__()
        if not endpoint.startswith(("tcp://", "ipc://")):
            raise DeviceUnavailable(
                f"bad device server address {endpoint!r}; expected tcp://HOST:PORT"
            )
        if retries < 1 or timeout_s <= 0 or connect_timeout_s <= 0:
            raise DeviceError("retries must be >= 1 and timeouts > 0")
        if heartbeat_s is not None and heartbeat_s < 0:
            raise DeviceError("heartbeat_s must be >= 0 (or None for no heartbeat)")
        self.keys: ClientKeys | None = None if curve_keys is None else client_keys(curve_keys)
        self.heartbeat_s = heartbeat_s
        self.endpoint = endpoint
        self.name = f"remote {endpoint}"
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.close_timeout_s = float(close_timeout_s)
        self.retries = int(retries)
        self.server_info: dict[str, Any] = {}
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._events: list[tuple[int, int]] = []  # handshake events of the current socket
        self._last_heard = -float("inf")  # time.monotonic() of the last reply
        self._next_id = 0
        self._caps: Capabilities | None = None
        self._limits = DEFAULT_LIMITS
        self._user_spec: NetworkSpec | None = None  # re-sent if the server restarts
        if connect:
            try:
                self.hello()
            except BaseException:
                self._drop_socket()
                self._ctx.term()
                raise

    # ------------------------------------------------------------------ contract
    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self.hello()
        assert self._caps is not None
        return self._caps

    def hello(self) -> Capabilities:
        """Ask the server what it hosts (cached as ``capabilities``) and its limits."""
        header, _ = self._request("hello", {}, None, self.connect_timeout_s)
        self._set_capabilities(header.get("capabilities"))
        self._limits = Limits.from_json(header.get("limits", DEFAULT_LIMITS.to_json()))
        info = header.get("server")
        self.server_info = dict(info) if isinstance(info, dict) else {}
        assert self._caps is not None
        return self._caps

    def load(self, spec: NetworkSpec) -> None:
        self._check_open()
        spec.validate()
        self._send_load(spec)
        self._user_spec = spec

    def run_batch(self, batch: CheckedBatch) -> np.ndarray:
        """Counts (V, B, N_out) int32 as a numpy array; params/inputs numpy or torch."""
        wire = batch.for_wire()
        chunks = self._set_chunks(wire)  # CapacityError before anything is sent
        if self.heartbeat_s is not None and time.monotonic() - self._last_heard > self.heartbeat_s:
            self._liveness_check()
        parts = [self._evaluate_once(wire.sets(start, stop)) for start, stop in chunks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def ping(self, tries: int | None = None) -> float:
        """Round-trip time of a ``ping`` in seconds (raises DeviceUnavailable if none)."""
        return self._ping(tries)[0]

    def _ping(self, tries: int | None = None) -> tuple[float, bool]:
        start = time.perf_counter()
        header, _ = self._request("ping", {}, None, self.connect_timeout_s, tries=tries)
        return time.perf_counter() - start, bool(header.get("loaded", True))

    def _liveness_check(self) -> None:
        """Heartbeat: is the server there, and does it still hold our network?"""
        _, loaded = self._ping()
        if not loaded and self._user_spec is not None:
            log.warning("%s holds no network (restarted?); re-loading", self.endpoint)
            self._send_load(self._user_spec)

    def close(self) -> None:
        """Tell the server to close its backend (best effort, short timeout), then let go."""
        if self._closed:
            return
        try:
            self._request("close", {}, None, self.close_timeout_s, tries=1)
        except DeviceError as exc:
            log.debug("close of %s not acknowledged: %s", self.endpoint, exc)
        finally:
            self._drop_socket()
            self._ctx.term()
            super().close()

    def describe(self) -> str:
        if self._caps is None:
            return f"device server {self.endpoint}"
        return self._caps.describe()

    # ------------------------------------------------------------------ load/evaluate
    def _send_load(self, spec: NetworkSpec) -> None:
        meta, arrays = spec.to_arrays()
        header, out = self._request("load", {"spec": meta}, arrays, self.timeout_s)
        effective = header.get("spec")
        if not isinstance(effective, dict):
            raise ProtocolError(f"{self.endpoint} answered load without the loaded 'spec'")
        # the backend's own spec (e.g. fixed-point calibrated), as a local backend exposes it
        self._spec = NetworkSpec.from_arrays(effective, {k: np.array(v) for k, v in out.items()})
        self._set_capabilities(header.get("capabilities"))

    def _evaluate_once(self, batch: CheckedBatch) -> np.ndarray:
        arrays = {**batch.params, "inputs": batch.inputs}
        for reloads in range(self.retries + 1):
            try:
                _, out = self._request("evaluate", {}, arrays, self.timeout_s)
                break
            except NotLoadedError:
                # restarted (maybe more than once, e.g. a crash loop settling): re-load, retry
                if self._user_spec is None or reloads == self.retries:
                    raise
                log.warning("%s holds no network (restarted?); re-loading, retrying", self.endpoint)
                self._send_load(self._user_spec)
        return self._counts(out, (batch.num_sets, batch.batch_size, self.spec.n_out))

    def _counts(self, out: Mapping[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
        counts = out.get("counts")
        if counts is None or counts.dtype != np.int32 or counts.shape != shape:
            got = "nothing" if counts is None else f"{counts.dtype} {counts.shape}"
            raise ProtocolError(
                f"{self.endpoint} answered evaluate with {got}; expected int32 counts {shape}"
            )
        return np.array(counts)  # own, writable memory (the frame is released)

    def _set_chunks(self, batch: CheckedBatch) -> list[tuple[int, int]]:
        """Split V so each request fits the server's limits and max_sets; CapacityError
        when the inputs alone, or one parameter set with them, cannot fit one message."""
        limits, inputs, num_sets = self._limits, batch.inputs, batch.num_sets
        if inputs.nbytes > min(limits.max_array_bytes, limits.max_total_bytes - _HEADER_ALLOWANCE):
            raise CapacityError(
                f"inputs take {inputs.nbytes} bytes, over what {self.endpoint} accepts in one "
                f"message ({limits.max_array_bytes} per array); use smaller batches"
            )
        if not batch.params:
            return [(0, num_sets)]
        per_set_total = sum(value[:1].nbytes for value in batch.params.values())
        per_set_max = max(value[:1].nbytes for value in batch.params.values())
        room = limits.max_total_bytes - inputs.nbytes - _HEADER_ALLOWANCE
        step = min(
            num_sets,
            room // max(per_set_total, 1),
            limits.max_array_bytes // max(per_set_max, 1),
            self.capabilities.max_sets or num_sets,
        )
        if step < 1:
            raise CapacityError(
                f"one parameter set ({per_set_total} bytes) plus the inputs does not fit in "
                f"one message to {self.endpoint} (limits: {limits.to_json()}); start the server "
                "with larger --max-array-mb/--max-total-mb or use smaller batches"
            )
        if step < num_sets:
            log.debug("splitting %d parameter sets into requests of %d", num_sets, step)
        return [(start, min(start + step, num_sets)) for start in range(0, num_sets, step)]

    # ------------------------------------------------------------------ transport
    def _request(
        self,
        op: str,
        fields: Mapping[str, Any],
        arrays: Mapping[str, Any] | None,
        timeout_s: float,
        tries: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request, lazy-pirate style; returns the reply or raises its typed error."""
        if self._ctx.closed:
            raise DeviceError(f"{self.name}: backend is closed")
        tries = self.retries if tries is None else tries
        hint = ""
        self._next_id += 1
        request_id = self._next_id
        frames = encode({"op": op, "id": request_id, **fields}, arrays, self._limits)
        start = time.monotonic()
        for attempt in range(1, tries + 1):
            sock = self._socket(timeout_s)
            try:
                sock.send_multipart(frames, copy=False)
                received = self._await_reply(sock, timeout_s)
                if received is not None:
                    reply = self._reply(received, request_id)
                    self._last_heard = time.monotonic()
                    return reply
            except zmq.Again:
                pass
            except BaseException:  # e.g. Ctrl-C mid-wait: a REQ socket left waiting is unusable
                self._drop_socket()
                raise
            hint = handshake_hint(self._events, self.keys) or hint
            if any(event in FATAL_HANDSHAKE_EVENTS for event, _ in self._events):
                self._drop_socket()  # a key problem: more tries would be refused the same way
                raise DeviceUnavailable(
                    f"device server {self.endpoint} refused the connection ({op!r} not sent): "
                    f"{hint}."
                )
            log.warning(
                "no reply from %s to %s within %.1f s (try %d of %d)%s%s",
                self.endpoint,
                op,
                timeout_s,
                attempt,
                tries,
                f": {hint}" if hint else "",
                "; reconnecting" if attempt < tries else "",
            )
            self._drop_socket()
        raise self._unanswered(op, tries, timeout_s, time.monotonic() - start, hint)

    def _unanswered(
        self, op: str, tries: int, timeout_s: float, took_s: float, hint: str
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
                f"device raise timeout_s."
            )
        )
        return DeviceUnavailable(
            f"device server {self.endpoint} did not answer {op!r}: {tries} tries of "
            f"{timeout_s:g} s each, {took_s:.1f} s in all. {why}"
        )

    def _keys_note(self) -> str:
        if self.keys is None:
            return "this client uses none; a server started with --curve-keys needs them"
        return f"this client uses the keys from {self.keys.source}"

    def _await_reply(self, sock: zmq.Socket, timeout_s: float) -> list[Any] | None:
        """The reply frames within ``timeout_s``, or None.  Watches the socket monitor too,
        so a refused handshake ends the wait at once instead of after the timeout."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, math.ceil(left * 1000))))
            if sock in ready:
                return sock.recv_multipart(copy=False)
            if self._monitor is not None and self._monitor in ready:
                while self._monitor.poll(0):
                    event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
                    self._events.append((int(event["event"]), int(event["value"])))
                if any(event in FATAL_HANDSHAKE_EVENTS for event, _ in self._events):
                    return None
        return None

    def _reply(self, frames: list[Any], request_id: int) -> tuple[dict[str, Any], dict]:
        header, arrays = decode(frames, DEFAULT_LIMITS, reply=True)
        if header.get("id") != request_id:
            raise ProtocolError(
                f"{self.endpoint} answered request {header.get('id')!r}, expected {request_id}"
            )
        error = header.get("error")
        if error is not None:
            raise error_from_wire(error["type"], error["message"])
        return header, arrays

    def _socket(self, timeout_s: float) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
            sock.setsockopt(zmq.IPV6, int("[" in self.endpoint))
            if self.keys is not None:
                secure_client_socket(sock, self.keys)
            self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            self._events = []
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            if self._monitor is not None:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None

    def _set_capabilities(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.endpoint} sent no capabilities")
        caps = Capabilities.from_json(data)
        self._caps = replace(caps, is_remote=True, address=self.endpoint)
        self.precision = caps.precision
