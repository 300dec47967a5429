"""Device server: host one local backend behind the wire protocol (``devices.protocol``).

    python -m devices.server --backend torch-sim|torch-sim-fixed|lava|lava-fixed|loihi2 \\
        --bind tcp://127.0.0.1:PORT [--exit-on-close] [--curve-keys DIR | --insecure]

Once ready it prints exactly one line to stdout and flushes it::

    polystep-neuro device server: backend=lava-fixed listening on tcp://127.0.0.1:41237

``--bind tcp://127.0.0.1:0`` lets the OS pick a free port; the line names the real one, so a
spawner reads it (``devices.spawn.start_server_process`` does) instead of racing for a port.

This module is the process: the command line, the hosted backend (by its catalog record),
and the receive/reply loop.  Requests are answered by ``devices.handler.DeviceServer``; who
may bind where and with which keys is ``devices.security``'s.

Socket choice — ROUTER.  Each message arrives with the identity of the peer that sent it,
and the reply goes back under that identity, whatever any other peer sends meanwhile: a REP
socket keeps one envelope state for all peers, and garbage or a message without its empty
envelope frame from one peer cost another its reply.  A message without the frame is still
answered (to its sender).  Requests are served one at a time, in arrival order, whichever
session they belong to: the hosted device runs one evaluate at a time anyway, so serving two
at once would gain nothing and double the memory held.  Peers that speak the legacy ZMTP
1.0/2.0 handshakes (no version negotiation) are refused (``security.secure_server_socket``
sets a ZAP domain, which makes libzmq drop them).  A client that gives up closes its REQ
socket and opens a new one; the late reply to the dead peer is dropped by libzmq, and the
resent request (evaluate is pure, load idempotent) is simply served again.

Imports no torch; backends are created lazily so the Lava env (Python 3.10, no torch) can
run it.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import zmq

from devices.base import BaseBackend
from devices.catalog import record as catalog_record
from devices.catalog import served_names
from devices.factories import open_record
from devices.handler import DeviceServer
from devices.options import Option, OptionTable, count, number, optional, seconds
from devices.protocol import DEFAULT_LIMITS, Limits, wire_error_message, wire_error_type
from devices.security import ServerKeys, check_bind, secure_server_socket, server_keys
from devices.sessions import SessionLimits
from devices.spawn import STARTUP_PREFIX
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable, PolystepError, UnknownBackend

__all__ = ["create_backend", "main", "serve"]

log = logging.getLogger(__name__)

POLL_MS = 200  # how often the idle loop looks at the stop flag and the idle sessions
HANDSHAKE_S = 10  # a peer that has not finished its handshake by then is dropped
_MIB = 2**20
_MAX_MB = float(1 << 20)  # a TiB: more than any message or network needs

# The server's own options, described once: the command line is made from this table, and
# a value out of range is one error line at startup.
SERVER_OPTIONS = OptionTable(
    Option(
        "--max-array-mb",
        DEFAULT_LIMITS.max_array_bytes / _MIB,
        "largest array one message may hold, in MiB; a client splits larger batches along V",
        number(minimum=1.0, inclusive=True, maximum=_MAX_MB),
    ),
    Option(
        "--max-total-mb",
        DEFAULT_LIMITS.max_total_bytes / _MIB,
        "largest message, in MiB",
        number(minimum=1.0, inclusive=True, maximum=_MAX_MB),
    ),
    Option(
        "--max-sessions",
        None,
        "clients (sessions) served at once, each with its own network (default 16; 1 on a "
        "Lava or Loihi 2 server: one graph per device)",
        optional(count(1, 1024), "16, or 1 for a Lava backend"),
    ),
    Option(
        "--session-mb",
        SessionLimits().session_bytes / _MIB,
        "largest network (its arrays) one session may load, in MiB",
        number(minimum=1.0, inclusive=True, maximum=_MAX_MB),
    ),
    Option(
        "--session-idle-s",
        SessionLimits().idle_s,
        "a session without a request for this long expires and its network is dropped",
        seconds(minimum=1.0, inclusive=True),
    ),
)


# --------------------------------------------------------------------------- backends
def create_backend(name: str, device: str = "auto") -> BaseBackend:
    """The local backend ``--backend name`` hosts; imports its stack only now (torch or Lava)."""
    if name not in served_names():
        raise UnknownBackend(
            f"unknown backend {name!r}; choose one of: {', '.join(served_names())}"
        )
    record = catalog_record(name)
    if record.lava_mode is None:
        try:
            return open_record(record, name, {"device": device})
        except ImportError as exc:
            raise DeviceUnavailable(
                f"backend {name!r} needs torch, which this Python does not have ({exc}); "
                "run the torch-sim server from the host environment"
            ) from None
    try:
        if importlib.util.find_spec("lava") is None:  # before announcing "ready"
            raise ImportError("No module named 'lava'")
        from devices.lava_local import LavaLocalBackend
    except ImportError as exc:
        raise DeviceUnavailable(
            f"backend {name!r} needs the Lava env (Python 3.10 with lava-nc): run "
            f"`polystep-neuro devices setup-lava` and start the server with that env's "
            f"python ({exc})"
        ) from None
    return LavaLocalBackend(record)


# --------------------------------------------------------------------------- main loop
class _Shutdown(BaseException):
    """Raised from the signal handler to abandon a long backend call on SIGTERM/SIGINT."""


def serve(
    server: DeviceServer,
    endpoint: str,
    *,
    insecure: bool = False,
    curve_keys: ServerKeys | str | os.PathLike[str] | None = None,
    out: Any = None,
) -> int:
    """Bind, announce, answer requests until close (--exit-on-close) or a signal.

    ``curve_keys``: a key folder (``devices keygen``) or loaded ServerKeys; with them only
    clients holding an authorized key get through, whatever address they come from."""
    check_bind(endpoint, insecure, curve_keys)
    keys = server_keys(curve_keys) if isinstance(curve_keys, (str, os.PathLike)) else curve_keys
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(
        zmq.MAXMSGSIZE, max(server.limits.max_array_bytes, server.limits.max_header_bytes)
    )
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_S * 1000)
    sock.setsockopt(zmq.IPV6, int("[" in endpoint))  # tcp://[::1]:PORT
    curve = secure_server_socket(ctx, sock, endpoint, insecure, keys)  # and the ZAP domain
    stop = threading.Event()
    previous = _install_signal_handlers(stop, server)
    try:
        sock.bind(endpoint)
        actual = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        _remember_port(actual)
        print(
            f"{STARTUP_PREFIX} backend={server.backend_name} listening on {actual}",
            file=out or sys.stdout,
            flush=True,
        )
        _loop(server, sock, stop, {} if keys is None else keys.names)
    except _Shutdown:
        log.info("stopping on signal")
    finally:
        _restore_signal_handlers(previous)
        server.close_backend()
        sock.close(linger=0)
        if curve is not None:
            curve.stop()
        ctx.term()
    return 0


def _loop(
    server: DeviceServer,
    sock: zmq.Socket,
    stop: threading.Event,
    key_names: Mapping[bytes, str],
) -> None:
    while not stop.is_set():
        server.expire_idle()
        if not sock.poll(POLL_MS, zmq.POLLIN):
            continue
        frames = sock.recv_multipart(copy=False)
        envelope, body = split_envelope(frames)
        server.busy = True
        try:
            reply = server.handle(body, _peer_address(frames, key_names))
        finally:
            server.busy = False
        del frames, body  # release the request buffers before the reply goes out
        sock.send_multipart(envelope + reply, copy=False)  # dropped if the peer is gone
        if server.should_exit:
            log.info("closed by the client; exiting (--exit-on-close)")
            return


def _peer_address(frames: Sequence[Any], key_names: Mapping[bytes, str]) -> str:
    """The sender's address as the socket saw it and, with CurveZMQ, the file of the key it
    was admitted with (for the log: every student may be the same user on the same host);
    "?" where the socket cannot say."""
    try:
        address = str(frames[-1].get("Peer-Address"))
    except (AttributeError, zmq.ZMQError):
        return "?"
    if key_names:
        try:
            user = frames[-1].get("User-Id").encode("ascii")
        except (AttributeError, zmq.ZMQError, UnicodeError):
            return address
        name = key_names.get(user)
        if name is not None:
            return f"{address}, key {name}"
    return address


def split_envelope(frames: Sequence[Any], depth: int = 8) -> tuple[list[bytes], list[Any]]:
    """(envelope, request) of a message a ROUTER received: the sender's identity and any
    frames up to the first empty one (a REQ client's delimiter), or the identity alone when
    the sender put no empty frame (a DEALER); the reply goes back under the envelope."""
    for index in range(1, min(len(frames), depth + 1)):
        if len(frames[index]) == 0:
            return [bytes(f) for f in frames[: index + 1]], list(frames[index + 1 :])
    return [bytes(frames[0])], list(frames[1:])


def _install_signal_handlers(stop: threading.Event, server: DeviceServer) -> dict[int, Any]:
    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        for sig in previous:  # a second signal during shutdown takes the default action
            signal.signal(sig, signal.SIG_DFL)
        if server.busy:
            raise _Shutdown

    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    return previous


def _restore_signal_handlers(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# --------------------------------------------------------------------------- forks
# The TCP port this process listens on, once bound (None: not yet, or not TCP).
_LISTENING: dict[str, int] = {}


def close_inherited_listener(port: int) -> int:
    """Close this process's listening TCP sockets on ``port``; how many were closed.

    A Lava server forks its worker processes after it bound its port, and each inherits the
    listening socket: killed with SIGKILL, the server leaves workers that hold the port, and
    a restart on it fails ("Address already in use") until they are found and killed.  Run
    in each forked child, this lets the port go with the server.  Linux only (/proc); a
    descriptor it cannot read is left alone."""
    import socket
    import stat

    closed = 0
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            address = sock.getsockname()
            mine = listening and isinstance(address, tuple) and address[1] == port
        except OSError:
            mine = False
        if mine:
            sock.close()
            closed += 1
        else:
            sock.detach()  # not ours to close: hand the descriptor back untouched
    return closed


def _after_fork_in_child() -> None:
    port = _LISTENING.get("port")
    if port is not None:
        try:
            close_inherited_listener(port)
        except Exception:  # a child must never fail for this
            pass


def _remember_port(endpoint: str) -> None:
    if endpoint.startswith("tcp://"):
        try:
            _LISTENING["port"] = int(endpoint.rsplit(":", 1)[1])
        except ValueError:
            pass


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.register_at_fork(after_in_child=_after_fork_in_child)  # a server process's forks
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s device-server %(levelname)s %(message)s"
    )
    try:
        limits, sessions = _settings(args)
        check_bind(args.bind, args.insecure, args.curve_keys)  # before the slow backend import
        keys = server_keys(args.curve_keys) if args.curve_keys is not None else None
        server = DeviceServer(
            args.backend,
            lambda: create_backend(args.backend, args.device),
            limits=limits,
            sessions=sessions,
            exit_on_close=args.exit_on_close,
        )
        return serve(server, args.bind, insecure=args.insecure, curve_keys=keys)
    except (PolystepError, zmq.ZMQError) as exc:
        print(
            f"{STARTUP_PREFIX} error: {wire_error_type(exc)}: {wire_error_message(exc)}",
            file=sys.stderr,
            flush=True,
        )
        return 2


def _settings(args: argparse.Namespace) -> tuple[Limits, SessionLimits]:
    """The message and session limits, each value checked once against SERVER_OPTIONS."""
    given = {name: getattr(args, _dest(name)) for name in SERVER_OPTIONS}
    values = SERVER_OPTIONS.resolve(
        "device server", {k: v for k, v in given.items() if v is not None}
    )
    one_graph = catalog_record(args.backend).lava_mode is not None
    max_sessions = values["--max-sessions"] or (1 if one_graph else 16)
    if args.backend == "loihi2" and max_sessions != 1:
        raise DeviceError("--max-sessions must be 1 for loihi2: the chip holds one graph")
    limits = Limits(
        max_array_bytes=int(values["--max-array-mb"] * _MIB),
        max_total_bytes=int(values["--max-total-mb"] * _MIB),
    )
    sessions = SessionLimits(
        max_sessions=max_sessions,
        session_bytes=int(values["--session-mb"] * _MIB),
        idle_s=values["--session-idle-s"],
    )
    return limits, sessions


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.server",
        description="Serve one polystep-neuro device backend over ZeroMQ.",
    )
    parser.add_argument("--backend", required=True, choices=served_names())
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:0",
        help="ZeroMQ endpoint (default tcp://127.0.0.1:0 = a free loopback port)",
    )
    parser.add_argument(
        "--exit-on-close", action="store_true", help="exit after a client sends close"
    )
    parser.add_argument(
        "--curve-keys",
        metavar="DIR",
        help="CurveZMQ: encrypt, and accept only clients whose public key is in "
        "DIR/authorized_clients (keys from `polystep-neuro devices keygen DIR`)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without encryption (trusted networks only)",
    )
    parser.add_argument("--device", default="auto", help="torch-sim device: auto, cpu, cuda")
    for name, option in SERVER_OPTIONS.items():
        kind = int if name == "--max-sessions" else float
        default = "" if option.default is None else f" (default {option.default:g})"
        parser.add_argument(name, type=kind, default=None, help=option.meaning + default)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="info (default): also each session opened (client and address), closed, expired "
        "or replaced, and each request a backend refused; warning: problems only",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
