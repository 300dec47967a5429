"""DeviceServer: one request's frames in, one reply's frames out, each client in its own
session.

Every request gets a reply: malformed messages and backend failures become typed error
replies (the client re-raises them by type), and the server keeps serving.  ``hello``
opens a session (``devices.sessions``); ``load``, ``evaluate`` and ``close`` name it, so
each client loads, evaluates and closes its own network only.  Every field is checked
before use (``devices.request_checks``); an evaluate is checked once more, by the
session's backend, against the network it holds, and its inputs reach that backend in the
dtype they crossed the wire in (binary spikes as uint8).  numpy-only (no torch): the Lava
env runs it.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from devices import request_checks as checks
from devices.base import BaseBackend
from devices.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
    error_reply,
)
from devices.sessions import Session, SessionLimits, Sessions
from polystep_neuro.core.batch import as_numpy
from polystep_neuro.core.errors import DeviceError, PolystepError

__all__ = ["INPUT_DTYPES", "DeviceServer"]

log = logging.getLogger(__name__)

INPUT_DTYPES = checks.INPUT_DTYPES
_OLD_CLIENT = (
    "this device server speaks protocol v2 (each client's network in its own session) and "
    "this client speaks v{version}: install the same polystep-neuro version on both sides"
)


class BadRequestLog:
    """Warnings for bad requests, at most ``burst`` per ``window_s`` seconds: a peer sending
    junk (20,000 messages a minute, measured) would otherwise bury the log; the rest are
    counted and said in one line when the next window's first one comes."""

    def __init__(
        self, burst: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst, self.window_s, self._clock = burst, window_s, clock
        self._window_start = -float("inf")
        self._said = 0
        self._unsaid = 0

    def warn(self, message: str, *args: Any) -> None:
        now = self._clock()
        if now - self._window_start >= self.window_s:
            if self._unsaid:
                log.warning(
                    "%d more bad requests in the %g s before (not logged one by one)",
                    self._unsaid,
                    self.window_s,
                )
            self._window_start, self._said, self._unsaid = now, 0, 0
        if self._said < self.burst:
            self._said += 1
            log.warning(message, *args)
        else:
            self._unsaid += 1


class DeviceServer:
    """Turns request frames into reply frames; never raises for a bad or failing request."""

    def __init__(
        self,
        backend_name: str,
        factory: Callable[[], BaseBackend],
        *,
        limits: Limits = DEFAULT_LIMITS,
        sessions: SessionLimits | None = None,
        exit_on_close: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``factory`` makes a hosted backend: one now (to fail fast at startup, and to
        answer ``hello`` before a session loads) and one per session at its first load."""
        self.backend_name = backend_name
        self.limits = limits
        self.exit_on_close = exit_on_close
        self._template: BaseBackend | None = factory()
        self.sessions = Sessions(factory, sessions or SessionLimits(), clock)
        self.should_exit = False
        self.busy = False
        self.bad_requests = BadRequestLog(clock=clock)

    def handle(self, frames: Sequence[Any], peer: str = "?") -> list[Any]:
        """One request in, one reply out (an error reply when anything fails); ``peer``,
        the sender's address, is for the log only."""
        request_id: Any = None
        op: Any = None
        try:
            header, arrays = decode(frames, self.limits)
            request_id, op = header["id"], header["op"]
            fields, out = self._dispatch(op, header, arrays, peer)
            return encode({"id": request_id, "op": op, **fields}, out, self.limits)
        except ProtocolError as exc:
            request_id = getattr(exc, "request_id", request_id)
            version = getattr(exc, "version", None)
            if isinstance(version, int) and not isinstance(version, bool) and 0 < version < 2:
                old = ProtocolError(_OLD_CLIENT.format(version=version))
                return error_reply(old, request_id, op, self.limits, version=version)
            self.bad_requests.warn(
                "bad request from %s (id=%r, op=%r): %s", peer, request_id, op, exc
            )
            return error_reply(exc, request_id, op, self.limits)
        except PolystepError as exc:
            log.info("%s failed: %s: %s", op, type(exc).__name__, exc)
            return error_reply(exc, request_id, op, self.limits)
        except Exception as exc:  # the server must outlive any backend bug
            log.exception("unexpected failure in %s", op)
            return error_reply(exc, request_id, op, self.limits)

    def expire_idle(self) -> None:
        """End the sessions idle for too long (the serve loop calls this while it waits)."""
        self.sessions.expire_idle()

    def _dispatch(
        self, op: str, header: Mapping[str, Any], arrays: dict[str, np.ndarray], peer: str
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        handlers = {
            "hello": functools.partial(self._hello, peer=peer),  # a session says where from
            "load": self._load,
            "evaluate": self._evaluate,
            "ping": self._ping,
            "close": self._close,
        }
        if op != "load" and op != "evaluate" and arrays:
            raise ProtocolError(f"{op} takes no arrays, got {', '.join(arrays)}")
        return handlers[op](header, arrays)

    def _session(self, header: Mapping[str, Any], op: str) -> Session:
        sid = checks.session_id(header, op)
        assert sid is not None
        return self.sessions.get(sid)

    # ------------------------------------------------------------------ the ops
    def _hello(
        self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], peer: str = "?"
    ) -> Any:
        """The session named (when it is still open), else a new one opened for ``peer`` (the
        sender, for the log); what the server is."""
        client = checks.client_name(header)
        sid = checks.session_id(header, "hello", required=False)
        session = None
        if sid is not None:
            try:
                session = self.sessions.get(sid)
            except DeviceError:  # expired or unknown: a new one below
                session = None
        if session is None:
            session = self.sessions.open(client, checks.client_token(header), peer)
        limits = self.sessions.limits
        info = {
            "backend": self.backend_name,
            "protocol": PROTOCOL_VERSION,
            "loaded": session.loaded,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "sessions": {
                "open": len(self.sessions),
                "max": limits.max_sessions,
                "idle_s": limits.idle_s,
                "session_bytes": limits.session_bytes,
            },
        }
        fields = {
            "session": session.id,
            "capabilities": self._capabilities(session),
            "server": info,
            "limits": self.limits.to_json(),
        }
        return fields, {}

    def _load(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        session = self._session(header, "load")
        spec = checks.spec_from_wire(header.get("spec"), arrays)
        nbytes = sum(int(a.nbytes) for a in arrays.values())
        self.sessions.check_network_bytes(nbytes)
        backend = self.sessions.backend(session)
        session.network = ""
        backend.load(spec)
        session.network = "-".join(map(str, spec.sizes)) + f", T={spec.num_steps}"
        session.network_bytes = nbytes
        effective_meta, effective_arrays = backend.spec.to_arrays()
        fields = {"capabilities": self._capabilities(session), "spec": effective_meta}
        return fields, effective_arrays

    def _evaluate(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        session = self._session(header, "evaluate")
        params, inputs = checks.evaluate_arrays(arrays)
        if not session.loaded or session.backend is None:
            raise NotLoadedError(
                f"{self.backend_name} server: this session holds no network (never loaded, "
                "or its load failed); send load first"
            )
        counts = session.backend.evaluate(params, inputs)
        return {}, {"counts": _counts_array(counts)}

    def _ping(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        """Alive; with a session, whether it still holds its network (SessionError if gone)."""
        sid = checks.session_id(header, "ping", required=False)
        loaded = sid is not None and self.sessions.get(sid).loaded
        return {"pong": True, "loaded": loaded}, {}

    def _close(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        sid = checks.session_id(header, "close")
        assert sid is not None
        closed = self.sessions.close(sid)
        self.should_exit = self.exit_on_close
        return {"closed": closed, "exiting": self.should_exit}, {}

    def _capabilities(self, session: Session) -> dict[str, Any]:
        backend = session.backend if session.backend is not None else self._template
        assert backend is not None
        return backend.capabilities.to_json()

    def close_backend(self) -> None:
        """Close every session's backend and the template (the server is stopping)."""
        self.sessions.close_all()
        template, self._template = self._template, None
        if template is not None:
            template.close()


def _counts_array(counts: Any) -> np.ndarray:
    """Backend result (numpy or torch, any integer-valued dtype) -> int32 (V, B, N_out)."""
    arr = as_numpy(counts)
    if arr.ndim != 3:
        raise DeviceError(f"backend returned counts of shape {arr.shape}, expected (V, B, N_out)")
    return np.ascontiguousarray(arr, dtype=np.int32)
