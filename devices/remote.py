"""RemoteBackend: the device contract over the wire protocol, to a ``devices.server``.

Requests go through ``devices.lazy_pirate.LazyPirate`` (a REQ socket, a timeout per try,
on timeout the socket closed, reopened and the request resent — safe because ``evaluate``
is pure and ``load``/``close`` are idempotent).  If a restarted server answers
that it holds no network, the client re-sends the spec it loaded and retries the evaluate,
so a server restart mid-run costs one re-load, not the run.  With ``heartbeat_s`` an
evaluate after a quiet spell is preceded by a cheap ``ping`` (short timeout), so a dead
server or tunnel is found in ``connect_timeout_s`` rather than a full evaluate timeout,
and a restarted one is re-loaded before the (large) evaluate request goes out.

With ``curve_keys`` (a folder from ``polystep-neuro devices keygen`` or a mapping) the
socket encrypts, presents the client key and pins the server key, and a socket monitor
(``devices.security.HandshakeWatch``) watches the handshakes, so "no reply" can say *why*
(key rejected, keys missing, wrong server key) instead of only "is the server running?".

Batches larger than the server's message limits (learned from ``hello``) or its
``max_sets`` are split along V and the counts concatenated in order.  A batch is checked
once, against the loaded spec, before anything is sent; binary spikes travel as uint8.

Host-side module, but torch-free at import: tensors are converted with
``.detach().cpu().numpy()`` where they arrive.  Not thread-safe (one REQ socket).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.catalog import RECORDS
from devices.lazy_pirate import LazyPirate
from devices.protocol import (
    DEFAULT_LIMITS,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
    error_from_wire,
)
from devices.security import client_keys
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import CapacityError, DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec

log = logging.getLogger(__name__)

_HEADER_ALLOWANCE = 64 * 1024  # bytes kept free for the JSON header when splitting batches


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
            self._client.close()
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
        """Send one request (retried by the lazy pirate); the reply or its typed error."""
        if self._client.closed:
            raise DeviceError(f"{self.name}: backend is closed")
        self._next_id += 1
        request_id = self._next_id
        frames = encode({"op": op, "id": request_id, **fields}, arrays, self._limits)
        tries = self.retries if tries is None else tries
        received = self._client.request(frames, timeout_s=timeout_s, tries=tries, what=op)
        reply = self._reply(received, request_id)
        self._last_heard = time.monotonic()
        return reply

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

    def _set_capabilities(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.endpoint} sent no capabilities")
        caps = Capabilities.from_json(data)
        self._caps = replace(caps, is_remote=True, address=self.endpoint)
        self.precision = caps.precision
