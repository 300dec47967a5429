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

Socket choice — REP.  The server hosts one backend and evaluates one request at a time, so
the strict receive/reply alternation of REP costs nothing, and REP pairs with the client's
lazy-pirate REQ: a client that gives up closes its REQ socket and opens a new one, the
server's late reply to the dead peer is dropped by libzmq, and the resent request (evaluate
is pure, load idempotent) is simply served again.  ROUTER would only pay off with a worker
thread answering pings during a long evaluate (heartbeats), which this version does not need:
the client's per-request timeout covers the longest evaluate.

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
from devices.protocol import DEFAULT_LIMITS, Limits, wire_error_message, wire_error_type
from devices.security import ServerKeys, check_bind, secure_server_socket, server_keys
from devices.spawn import STARTUP_PREFIX
from polystep_neuro.core.errors import DeviceUnavailable, PolystepError

__all__ = ["create_backend", "main", "serve"]

log = logging.getLogger(__name__)

POLL_MS = 200  # how often the idle loop looks at the stop flag


# --------------------------------------------------------------------------- backends
def create_backend(name: str, device: str = "auto") -> BaseBackend:
    """The local backend ``--backend name`` hosts; imports its stack only now (torch or Lava)."""
    if name not in served_names():
        raise DeviceUnavailable(
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
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max(server.limits.max_array_bytes, 1 << 20))
    sock.setsockopt(zmq.IPV6, int("[" in endpoint))  # tcp://[::1]:PORT
    curve = secure_server_socket(ctx, sock, endpoint, insecure, keys)
    stop = threading.Event()
    previous = _install_signal_handlers(stop, server)
    try:
        sock.bind(endpoint)
        actual = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        print(
            f"{STARTUP_PREFIX} backend={server.backend_name} listening on {actual}",
            file=out or sys.stdout,
            flush=True,
        )
        _loop(server, sock, stop)
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


def _loop(server: DeviceServer, sock: zmq.Socket, stop: threading.Event) -> None:
    while not stop.is_set():
        if not sock.poll(POLL_MS, zmq.POLLIN):
            continue
        frames = sock.recv_multipart(copy=False)
        server.busy = True
        try:
            reply = server.handle(frames)
        finally:
            server.busy = False
        del frames  # release the request buffers before the reply goes out
        sock.send_multipart(reply, copy=False)
        if server.should_exit:
            log.info("closed by the client; exiting (--exit-on-close)")
            return


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


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s device-server %(levelname)s %(message)s"
    )
    limits = Limits(
        max_array_bytes=int(args.max_array_mb * 2**20),
        max_total_bytes=int(args.max_total_mb * 2**20),
    )
    try:
        check_bind(args.bind, args.insecure, args.curve_keys)  # before the slow backend import
        keys = server_keys(args.curve_keys) if args.curve_keys is not None else None
        server = DeviceServer(
            args.backend,
            lambda: create_backend(args.backend, args.device),
            limits=limits,
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
    mib = 2**20
    parser.add_argument("--max-array-mb", type=float, default=DEFAULT_LIMITS.max_array_bytes / mib)
    parser.add_argument("--max-total-mb", type=float, default=DEFAULT_LIMITS.max_total_bytes / mib)
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    return parser


if __name__ == "__main__":
    sys.exit(main())
