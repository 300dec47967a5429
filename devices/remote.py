"""RemoteBackend: the device contract over the wire protocol, to a ``devices.server``.

Requests go through ``devices.lazy_pirate.LazyPirate`` (a REQ socket, a timeout per try,
on timeout the socket closed, reopened and the request resent — safe because ``evaluate``
is pure and ``load``/``close`` are idempotent).  Each client works in its own session on
the server (protocol v2: ``hello`` opens it, every request names it), so clients sharing
a server never see each other's network.  A server that lost the session (it restarted,
or the session expired after idling) or its network gets a new session and the spec this
client loaded, and the evaluate is retried: a server restart mid-run costs one re-load,
not the run.  With ``heartbeat_s`` an evaluate after a quiet spell is preceded by a cheap
``ping`` (short timeout), so a dead server or tunnel is found in ``connect_timeout_s``
rather than a full evaluate timeout, and a restarted one is re-loaded before the (large)
evaluate request goes out.

With ``curve_keys`` (a folder from ``polystep-neuro devices keygen`` or a mapping) the
socket encrypts, presents the client key and pins the server key, and a socket monitor
(``devices.security.HandshakeWatch``) watches the handshakes, so "no reply" can say *why*
(key rejected, keys missing, wrong server key) instead of only "is the server running?".

Batches larger than the server's message limits (learned from ``hello``) or its
``max_sets`` are split along V, so that each request *and its reply* fit, and the counts
concatenated in order.  A batch is checked once, against the loaded spec, before anything
is sent; binary spikes travel as uint8.

Host-side module, but torch-free at import: tensors are converted with
``.detach().cpu().numpy()`` where they arrive.  Not thread-safe (one REQ socket).
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.catalog import RECORDS
from devices.lazy_pirate import LazyPirate, Probe
from devices.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    NotLoadedError,
    ProtocolError,
    SessionError,
    SessionExpired,
    decode,
    encode,
    error_from_wire,
)
from devices.security import client_keys, host_problem, port_problem
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import CapacityError, DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec

log = logging.getLogger(__name__)

_HEADER_ALLOWANCE = 64 * 1024  # bytes kept free for the JSON header when splitting batches
# a probe's reply naming one of these: the server no longer holds the waiting request's session
_SESSION_LOST = (SessionError.__name__, SessionExpired.__name__)


def _session_lost(reply: list[Any]) -> BaseException | None:
    """A probe's verdict: the session error its ping's reply names (the server no longer
    holds the waiting request's session), else None (wait on)."""
    try:
        header, _ = decode(reply, DEFAULT_LIMITS, reply=True)
    except ProtocolError:
        return None
    error = header.get("error")
    if not isinstance(error, dict) or error.get("type") not in _SESSION_LOST:
        return None
    return error_from_wire(error["type"], str(error.get("message", "")))


def _client_label() -> str:
    """Who this client is, as a busy server names it to others: user@host pid N."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd)
        user = "?"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"[:200]


_CLIENT = _client_label()


class RemoteBackend(BaseBackend):
    """A backend served by ``python -m devices.server`` at ``endpoint`` (tcp://host:port)."""

    is_remote = True

    def __init__(self, endpoint: str, **options: Any) -> None:
        """The options are the ``remote`` record's (``devices.catalog.REMOTE_OPTIONS``):
        ``timeout_s`` bounds one try of load/evaluate (make it exceed the slowest
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
        if problem := port_problem(endpoint, bind=False) or host_problem(endpoint):
            raise DeviceUnavailable(f"bad device server address {endpoint!r}: {problem}")
        resolved = self._adopt(RECORDS["remote"], options)
        keys = resolved["curve_keys"]
        self.keys = None if keys is None else client_keys(keys)
        self.heartbeat_s: float | None = resolved["heartbeat_s"]
        self.endpoint = endpoint
        self.name = f"remote {endpoint}"
        self.timeout_s: float = resolved["timeout_s"]
        self.connect_timeout_s: float = resolved["connect_timeout_s"]
        self.close_timeout_s: float = resolved["close_timeout_s"]
        self.retries: int = resolved["retries"]
        self.server_info: dict[str, Any] = {}
        self._client = LazyPirate(endpoint, self.keys)
        self._last_heard = -float("inf")  # time.monotonic() of the last reply
        self._next_id = 0
        self._caps: Capabilities | None = None
        self._limits = DEFAULT_LIMITS
        self._user_spec: NetworkSpec | None = None  # re-sent if the server restarts
        self._session: str | None = None  # named by every request; hello opens it
        # sent with every hello: the server answers a retried hello with the session its
        # first try opened (that try's reply lost to a timeout) instead of opening another
        self._token = secrets.token_hex(16)
        if resolved["connect"]:
            try:
                self.hello()
            except BaseException:
                self._client.close()
                raise

    # ------------------------------------------------------------------ contract
    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self.hello()
        assert self._caps is not None
        return self._caps

    @property
    def first_contact_s(self) -> float:
        """One try of hello or ping: ``connect_timeout_s``, never more than ``timeout_s``."""
        return min(self.connect_timeout_s, self.timeout_s)

    def hello(self) -> Capabilities:
        """Ask the server what it hosts (cached as ``capabilities``) and its limits; opens
        this client's session (or keeps the one it has, while the server still holds it)."""
        fields: dict[str, Any] = {"client": _CLIENT, "token": self._token}
        if self._session is not None:
            fields["session"] = self._session
        # a reachable server busy with another client's evaluate answers late: once the
        # connection is up, hello waits as long as a request may (timeout_s)
        header, _ = self._request(
            "hello", fields, None, self.first_contact_s, connected_s=self.timeout_s
        )
        session = header.get("session")
        if not isinstance(session, str):
            raise ProtocolError(f"{self.endpoint} answered hello without a session")
        self._session = session
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
        """Round-trip time of a ``ping`` in seconds (raises DeviceUnavailable if none): is
        the server there, whether or not it still holds this client's session."""
        start = time.perf_counter()
        self._request("ping", {}, None, self.first_contact_s, tries=tries)
        return time.perf_counter() - start

    def _ping(self, tries: int | None = None) -> tuple[float, bool]:
        """(round trip, whether this client's session still holds its network)."""
        start = time.perf_counter()
        fields = {} if self._session is None else {"session": self._session}
        header, _ = self._request("ping", fields, None, self.first_contact_s, tries=tries)
        return time.perf_counter() - start, bool(header.get("loaded", False))

    def _liveness_check(self) -> None:
        """Heartbeat: is the server there, and does it still hold our network?"""
        try:
            _, loaded = self._ping()
        except SessionError as exc:
            self._session, loaded = None, False
            why = f"{exc.__class__.__name__}: {exc}"
        else:
            why = "it holds no network (restarted?)"
        if not loaded and self._user_spec is not None:
            log.warning("%s: %s; re-loading", self.endpoint, why)
            self._send_load(self._user_spec)

    def close(self) -> None:
        """Tell the server to close its backend (best effort, short timeout), then let go."""
        if self._closed:
            return
        try:
            if self._session is not None:
                fields = {"session": self._session}
                self._request("close", fields, None, self.close_timeout_s, tries=1)
        except DeviceError as exc:
            log.debug("close of %s not acknowledged: %s", self.endpoint, exc)
        finally:
            self._client.close()
            super().close()

    def describe(self) -> str:
        if self._caps is None:
            return f"device server {self.endpoint}"
        return self._caps.describe()

    # ------------------------------------------------------------------ load/evaluate
    def _in_session(
        self, op: str, fields: Mapping[str, Any], arrays: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A request in this client's session.  A server that lost the session (it
        restarted, or the session expired) gets a new session, and an evaluate the network
        again (maybe more than once: a crash loop settling), before the request is resent."""
        for attempt in range(self.retries + 1):
            if self._session is None:
                self.hello()
            try:
                return self._request(
                    op, {**fields, "session": self._session}, arrays, self.timeout_s,
                    probe=self._session_probe(self._session),
                )  # fmt: skip
            except (SessionError, NotLoadedError) as exc:
                again = op == "evaluate" and self._user_spec is not None
                if attempt == self.retries or not (again or isinstance(exc, SessionError)):
                    raise
                if isinstance(exc, SessionError):
                    self._session = None
                log.warning(  # handled: said as what happens next, not as a failure
                    "%s: %s; %s (handled, the run goes on)",
                    self.endpoint,
                    exc,
                    "re-loading the network and retrying" if again
                    else "opening a new session and retrying",
                )  # fmt: skip
                if again:
                    assert self._user_spec is not None
                    self._send_load(self._user_spec)
        raise AssertionError("unreachable")

    def _send_load(self, spec: NetworkSpec) -> None:
        # A device runs every output copy as a neuron of its own (the wire has no readout);
        # the copies stay on this side, so evaluate says what a local backend says.
        meta, arrays = spec.device_network().to_arrays()
        header, out = self._in_session("load", {"spec": meta}, arrays)
        effective = header.get("spec")
        if not isinstance(effective, dict):
            raise ProtocolError(f"{self.endpoint} answered load without the loaded 'spec'")
        # the backend's own spec (e.g. fixed-point calibrated), as a local backend exposes it
        self._spec = NetworkSpec.from_arrays(effective, {k: np.array(v) for k, v in out.items()})
        if spec.output_copies != 1:
            self._spec = self._spec.with_readout_copies(spec.output_copies)
        self._set_capabilities(header.get("capabilities"))

    def _evaluate_once(self, batch: CheckedBatch) -> np.ndarray:
        arrays = {**batch.params, "inputs": batch.inputs}
        _, out = self._in_session("evaluate", {}, arrays)
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
        """Split V so each request and its reply (the counts) fit the server's limits, and
        no request asks for more than max_sets; CapacityError when the inputs alone, or one
        parameter set with them, or one set's counts, cannot fit one message."""
        limits, inputs, num_sets = self._limits, batch.inputs, batch.num_sets
        room_total = limits.max_total_bytes - _HEADER_ALLOWANCE
        if inputs.nbytes > min(limits.max_array_bytes, room_total):
            raise CapacityError(
                f"inputs take {inputs.nbytes} bytes, over what {self.endpoint} accepts in one "
                f"message ({limits.max_array_bytes} per array); use smaller batches"
            )
        counts_per_set = batch.batch_size * self.spec.n_out * np.dtype(np.int32).itemsize
        per_set_total = sum(value[:1].nbytes for value in batch.params.values())
        per_set_max = max((value[:1].nbytes for value in batch.params.values()), default=0)
        step = min(
            num_sets,
            (room_total - inputs.nbytes) // max(per_set_total, 1),
            limits.max_array_bytes // max(per_set_max, 1),
            min(limits.max_array_bytes, room_total) // counts_per_set,
            self.capabilities.max_sets or num_sets,
        )
        if step < 1:
            raise CapacityError(
                f"one parameter set ({per_set_total} bytes, {counts_per_set} bytes of counts) "
                f"plus the inputs does not fit in one message to {self.endpoint} (limits: "
                f"{limits.to_json()}); start the server with larger --max-array-mb/"
                "--max-total-mb or use smaller batches"
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
        probe: Probe | None = None,
        connected_s: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send one request (retried by the lazy pirate); the reply or its typed error."""
        if self._client.closed:
            raise DeviceError(f"{self.name}: backend is closed")
        self._next_id += 1
        request_id = self._next_id
        frames = encode({"op": op, "id": request_id, **fields}, arrays, self._limits)
        tries = self.retries if tries is None else tries
        received = self._client.request(
            frames, timeout_s=timeout_s, tries=tries, what=op, probe=probe,
            connected_s=connected_s,
        )  # fmt: skip
        reply = self._reply(received, request_id)
        self._last_heard = time.monotonic()
        return reply

    def _session_probe(self, session: str) -> Probe | None:
        """Pings in ``session`` while a load or evaluate waits longer than one ping's bound:
        a server that restarted answers them "no such session" at once, and the request is
        sent again (new session, the network re-loaded) instead of waiting out ``timeout_s``."""
        every_s = self.first_contact_s
        if self.timeout_s <= every_s:
            return None
        ping = encode({"op": "ping", "id": 0, "session": session}, None, self._limits)
        return Probe(ping, _session_lost, every_s)

    def _reply(self, frames: list[Any], request_id: int) -> tuple[dict[str, Any], dict]:
        try:
            header, arrays = decode(frames, DEFAULT_LIMITS, reply=True)
        except ProtocolError as exc:
            version = getattr(exc, "version", None)
            if isinstance(version, int) and version < PROTOCOL_VERSION:
                raise ProtocolError(
                    f"device server {self.endpoint} speaks protocol v{version} (an older "
                    f"polystep-neuro, without sessions) and this client v{PROTOCOL_VERSION}: "
                    "install the same polystep-neuro version on both sides"
                ) from None
            raise
        if header.get("id") != request_id:
            raise ProtocolError(
                f"{self.endpoint} answered request {header.get('id')!r}, expected {request_id}"
            )
        error = header.get("error")
        if error is not None:
            raise error_from_wire(error["type"], error["message"])
        return header, arrays

    def _set_capabilities(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.endpoint} sent no capabilities")
        caps = Capabilities.from_json(data)
        self._caps = replace(caps, is_remote=True, address=self.endpoint)
        self.precision = caps.precision
