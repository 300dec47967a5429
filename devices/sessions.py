"""Sessions of a device server: each client's network, its capacity and its idle clock.

A client opens a session with ``hello`` and names it in every later request; the server
keeps one hosted backend per session, so a client only ever evaluates the network it
loaded itself.  Limits bound what clients can hold: at most ``max_sessions`` sessions (one
on a Lava or Loihi 2 server: one graph per device), at most ``session_bytes`` of network
arrays each, and a session left idle for ``idle_s`` seconds expires (its backend is
closed; its next request gets ``SessionExpired``).  When every slot is taken, a new
``hello`` takes the longest-idle slot that holds no network (losing it costs its client
one ``hello``); when each holds one, the ``hello`` gets ``Busy`` naming their clients.
A ``hello`` may carry the client's own token: a retried ``hello`` (its first try's reply
lost to a timeout while the server was busy) then gets the session the first try opened,
instead of opening one more that would hold a slot, on a one-slot server the device, until
it expires.

Requests of all sessions are served one at a time, in arrival order (``devices.server``).
Standard library only (the Lava env runs it).
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from devices.base import BaseBackend
from devices.protocol import Busy, SessionError, SessionExpired
from polystep_neuro.core.errors import CapacityError

__all__ = ["Session", "SessionLimits", "Sessions"]

log = logging.getLogger(__name__)

_FORGET_AFTER = 4096  # expired session ids remembered, to say "expired" rather than "unknown"


@dataclass(frozen=True)
class SessionLimits:
    """How many sessions a server holds, how much network each may load, how long an idle
    one lives."""

    max_sessions: int = 16
    session_bytes: int = 256 << 20
    idle_s: float = 600.0


@dataclass
class Session:
    """One client's slot: its backend (made at its first load) and what it holds."""

    id: str
    client: str
    last_used: float
    backend: BaseBackend | None = None
    network: str = ""  # what it loaded, for people ("8-12-3, T=10"); "" = nothing yet
    network_bytes: int = 0
    token: str | None = None  # the client's hello token, if it sent one
    peer: str = "?"  # where its hello came from (address, and the key file under CurveZMQ)

    @property
    def loaded(self) -> bool:
        return bool(self.network)

    def describe(self, now: float) -> str:
        held = f"holding a {self.network} network" if self.loaded else "holding no network"
        ago = now - self.last_used  # since its last request, not how long it has done nothing
        where = "" if self.peer == "?" else f" ({self.peer})"
        return (
            f"session {self.id[:8]} of {self.client!r}{where}, {held}, last request {ago:.0f} s ago"
        )


class Sessions:
    """The open sessions of one server (not thread-safe: the serve loop is one thread)."""

    def __init__(
        self,
        factory: Callable[[], BaseBackend],
        limits: SessionLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._factory = factory
        self._clock = clock
        self._open: dict[str, Session] = {}
        self._expired: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._open.values()))

    def open(self, client: str, token: str | None = None, peer: str = "?") -> Session:
        """A new session for ``client``, or the one ``token`` opened while it is open (a
        retried hello); Busy when every slot holds another's network."""
        self.expire_idle()
        now = self._clock()
        mine = [s for s in self._open.values() if s.token == token] if token else []
        if mine:
            known = mine[0]
            known.last_used = now
            log.info("session %s of %r answered again (a retried hello)", known.id[:8], client)
            return known
        if len(self._open) >= self.limits.max_sessions:
            empty = [s for s in self._open.values() if not s.loaded]
            if not empty:
                raise Busy(self._busy_message(now))
            taken = min(empty, key=lambda s: s.last_used)
            log.info("session %s of %r gives its slot to a new client", taken.id[:8], taken.client)
            self._end(taken, "replaced")
        session = Session(secrets.token_hex(16), client, now, token=token, peer=peer)
        self._open[session.id] = session
        log.info(
            "session %s opened for %r at %s (%d open)", session.id[:8], client, peer,
            len(self._open),
        )  # fmt: skip
        return session

    def get(self, session_id: str) -> Session:
        """The open session ``session_id``, marked used now; SessionExpired or SessionError."""
        self.expire_idle()
        session = self._open.get(session_id)
        if session is None:
            if session_id in self._expired:
                raise SessionExpired(
                    f"session {session_id[:8]} expired after {self.limits.idle_s:g} s without "
                    "a request (the server's --session-idle-s) and its network was dropped: "
                    "open a new session (hello) and load again"
                )
            raise SessionError(
                f"this server holds no session {session_id[:8]} (it restarted, or the session "
                "was closed or gave its slot to another client): open a new session (hello) "
                "and load again"
            )
        session.last_used = self._clock()
        return session

    def backend(self, session: Session) -> BaseBackend:
        """The session's own backend, made at its first use."""
        if session.backend is None:
            session.backend = self._factory()
        return session.backend

    def check_network_bytes(self, nbytes: int) -> None:
        """CapacityError when a network of ``nbytes`` would exceed one session's share."""
        limit = self.limits.session_bytes
        if nbytes > limit:
            raise CapacityError(
                f"this network's arrays take {nbytes / 2**20:.1f} MiB, over the server's "
                f"per-session limit of {limit / 2**20:g} MiB (--session-mb); use a smaller "
                "network or a server started with a larger --session-mb"
            )

    def close(self, session_id: str) -> bool:
        """End a session (its backend is closed); False when there was none."""
        session = self._open.get(session_id)
        if session is None:
            return False
        self._end(session, "closed")
        return True

    def expire_idle(self) -> int:
        """End every session idle for longer than the limit; how many ended."""
        now = self._clock()
        idle = [s for s in self._open.values() if now - s.last_used > self.limits.idle_s]
        for session in idle:
            self._end(session, "expired")
            self._expired[session.id] = now
            while len(self._expired) > _FORGET_AFTER:
                self._expired.popitem(last=False)
        return len(idle)

    def close_all(self) -> None:
        for session in list(self._open.values()):
            self._end(session, "closed")

    def _end(self, session: Session, why: str) -> None:
        del self._open[session.id]
        backend, session.backend = session.backend, None
        if backend is not None:
            try:
                backend.close()
            except Exception as exc:  # the server outlives a backend that fails to close
                log.warning("closing the backend of session %s: %s", session.id[:8], exc)
        log.info("session %s of %r %s", session.id[:8], session.client, why)

    def _busy_message(self, now: float) -> str:
        slots = self.limits.max_sessions
        holders = "; ".join(s.describe(now) for s in self._open.values())
        what = "the device is held by" if slots == 1 else f"all {slots} session slots are held:"
        return (
            f"device server busy: {what} {holders}. A slot frees when its client closes or "
            f"after {self.limits.idle_s:g} s without a request; try again then, or use "
            "another server. A client that was killed never closes its slot: restarting the "
            "server frees it at once (a shorter --session-idle-s frees such slots sooner)"
        )
