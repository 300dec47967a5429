"""Device server: host one local backend behind the wire protocol (``devices.protocol``).

    python -m devices.server --backend torch-sim|torch-sim-fixed|lava|lava-fixed|loihi2 \\
        --bind tcp://127.0.0.1:PORT [--exit-on-close] [--curve-keys DIR | --insecure]

Once ready it prints exactly one line to stdout and flushes it::

    polystep-neuro device server: backend=lava-fixed listening on tcp://127.0.0.1:41237

``--bind tcp://127.0.0.1:0`` lets the OS pick a free port; the line names the real one, so a
spawner reads it (``start_server_process`` does) instead of racing for a port.

Socket choice — REP.  The server hosts one backend and evaluates one request at a time, so
the strict receive/reply alternation of REP costs nothing, and REP pairs with the client's
lazy-pirate REQ: a client that gives up closes its REQ socket and opens a new one, the
server's late reply to the dead peer is dropped by libzmq, and the resent request (evaluate
is pure, load idempotent) is simply served again.  ROUTER would only pay off with a worker
thread answering pings during a long evaluate (heartbeats), which this version does not need:
the client's per-request timeout covers the longest evaluate.

Every request gets a reply: malformed messages and backend failures become typed error
replies and the server keeps serving.  This module imports no torch; backends are created
lazily so the Lava env (Python 3.10, no torch) can run it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import ipaddress
import logging
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

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
    wire_error_message,
    wire_error_type,
)
from devices.security import CurveServer, ServerKeys, server_keys
from polystep_neuro.errors import DeviceError, DeviceUnavailable, PolystepError, SpecError
from polystep_neuro.network import NetworkSpec

log = logging.getLogger(__name__)

LAVA_MODES = {"lava": "floating_pt", "lava-fixed": "fixed_pt", "loihi2": "loihi2"}
TORCH_PRECISIONS = {"torch-sim": "float32", "torch-sim-fixed": "loihi-fixed"}
BACKEND_NAMES = (*TORCH_PRECISIONS, *LAVA_MODES)
STARTUP_PREFIX = "polystep-neuro device server:"
STARTUP_RE = re.compile(r"^polystep-neuro device server: backend=(\S+) listening on (\S+)\s*$")
INPUT_DTYPES = ("bool", "uint8", "float32")
POLL_MS = 200  # how often the idle loop looks at the stop flag
PUBLIC_BIND_MESSAGE = (
    "binding a non-loopback address needs CurveZMQ keys (--curve-keys DIR; make them with "
    "`polystep-neuro devices keygen DIR`) or, on a trusted network only, --insecure"
)


# --------------------------------------------------------------------------- backends
def create_backend(name: str, device: str = "auto") -> BaseBackend:
    """A local backend by name; imports its stack only now (torch or Lava)."""
    if name in TORCH_PRECISIONS:
        try:
            from devices.torch_sim import TorchSimBackend
        except ImportError as exc:
            raise DeviceUnavailable(
                f"backend {name!r} needs torch, which this Python does not have ({exc}); "
                "run the torch-sim server from the host environment"
            ) from None
        return TorchSimBackend(precision=TORCH_PRECISIONS[name], device=device)
    if name in LAVA_MODES:
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
        return LavaLocalBackend(LAVA_MODES[name])
    raise DeviceUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")


# --------------------------------------------------------------------------- requests
class DeviceServer:
    """Turns request frames into reply frames; never raises for a bad or failing request."""

    def __init__(
        self,
        backend_name: str,
        factory: Callable[[], BaseBackend] | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        exit_on_close: bool = False,
    ) -> None:
        self.backend_name = backend_name
        self.limits = limits
        self.exit_on_close = exit_on_close
        self._factory = factory or (lambda: create_backend(backend_name))
        self._backend: BaseBackend | None = self._factory()  # fail fast at startup
        self.loaded = False
        self.should_exit = False
        self.busy = False

    @property
    def backend(self) -> BaseBackend:
        """The hosted backend; a fresh one after a client closed the previous."""
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def handle(self, frames: Sequence[Any]) -> list[Any]:
        """One request in, one reply out (an error reply when anything fails)."""
        request_id: Any = None
        op: Any = None
        try:
            header, arrays = decode(frames, self.limits)
            request_id, op = header["id"], header["op"]
            fields, out = self._dispatch(op, header, arrays)
            return encode({"id": request_id, "op": op, **fields}, out, self.limits)
        except ProtocolError as exc:
            request_id = getattr(exc, "request_id", request_id)
            log.warning("bad request (id=%r, op=%r): %s", request_id, op, exc)
            return error_reply(exc, request_id, op, self.limits)
        except PolystepError as exc:
            log.info("%s failed: %s: %s", op, type(exc).__name__, exc)
            return error_reply(exc, request_id, op, self.limits)
        except Exception as exc:  # the server must outlive any backend bug
            log.exception("unexpected failure in %s", op)
            return error_reply(exc, request_id, op, self.limits)

    def _dispatch(
        self, op: str, header: Mapping[str, Any], arrays: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        handlers = {
            "hello": self._hello,
            "load": self._load,
            "evaluate": self._evaluate,
            "ping": self._ping,
            "close": self._close,
        }
        return handlers[op](header, arrays)

    def _hello(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("hello", arrays)
        info = {
            "backend": self.backend_name,
            "protocol": PROTOCOL_VERSION,
            "loaded": self.loaded,
            "pid": os.getpid(),
            "python": platform.python_version(),
        }
        fields = {
            "capabilities": self.backend.capabilities.to_json(),
            "server": info,
            "limits": self.limits.to_json(),
        }
        return fields, {}

    def _load(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        meta = header.get("spec")
        if not isinstance(meta, dict):
            raise ProtocolError(
                "load needs a 'spec' object (the metadata of NetworkSpec.to_arrays()) "
                "and the spec arrays"
            )
        spec = _spec_from_wire(meta, arrays)
        self.loaded = False
        self.backend.load(spec)
        self.loaded = True
        effective_meta, effective_arrays = self.backend.spec.to_arrays()
        fields = {"capabilities": self.backend.capabilities.to_json(), "spec": effective_meta}
        return fields, effective_arrays

    def _evaluate(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        if not self.loaded:
            raise NotLoadedError(
                f"{self.backend_name} server holds no network (never loaded, closed, or "
                "restarted); send load first"
            )
        params = dict(arrays)
        inputs = params.pop("inputs", None)
        if inputs is None:
            raise ProtocolError("evaluate needs an 'inputs' array of shape (B, T, N_in)")
        if inputs.dtype.name not in INPUT_DTYPES:
            raise ProtocolError(
                f"evaluate 'inputs' must be one of {', '.join(INPUT_DTYPES)}, "
                f"got {inputs.dtype.name}"
            )
        # backends get what the host API gives them: float32 spikes
        inputs = inputs.astype(np.float32, copy=False)
        counts = self.backend.evaluate(params, inputs)
        return {}, {"counts": _counts_array(counts)}

    def _ping(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("ping", arrays)
        return {"pong": True, "loaded": self.loaded}, {}

    def _close(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("close", arrays)
        self.close_backend()
        self.should_exit = self.exit_on_close
        return {"closed": True, "exiting": self.should_exit}, {}

    def close_backend(self) -> None:
        backend, self._backend, self.loaded = self._backend, None, False
        if backend is not None:
            backend.close()


def _no_arrays(op: str, arrays: Mapping[str, np.ndarray]) -> None:
    if arrays:
        raise ProtocolError(f"{op} takes no arrays, got {', '.join(arrays)}")


def _spec_from_wire(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> NetworkSpec:
    # own copies: the frames' memory is reused once the reply is sent
    owned = {name: np.array(value) for name, value in arrays.items()}
    try:
        return NetworkSpec.from_arrays(meta, owned)
    except SpecError:
        raise
    except Exception as exc:  # a malformed meta object can fail in many ways
        raise SpecError(f"malformed network spec: {type(exc).__name__}: {exc}") from None


def _counts_array(counts: Any) -> np.ndarray:
    """Backend result (numpy or torch, any integer-valued dtype) -> int32 (V, B, N_out)."""
    if hasattr(counts, "detach"):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts)
    if arr.ndim != 3:
        raise DeviceError(f"backend returned counts of shape {arr.shape}, expected (V, B, N_out)")
    return np.ascontiguousarray(arr, dtype=np.int32)


# --------------------------------------------------------------------------- binding
def is_local_endpoint(endpoint: str) -> bool:
    """True for tcp loopback addresses (and ipc/inproc); public or wildcard binds are not."""
    transport, sep, address = endpoint.partition("://")
    if not sep:
        raise DeviceError(f"bad endpoint {endpoint!r}; expected tcp://HOST:PORT")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp" or ":" not in address:
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a hostname: assume reachable from outside
        return False


def check_bind(endpoint: str, insecure: bool, curve_keys: Any = None) -> None:
    if not is_local_endpoint(endpoint) and not insecure and curve_keys is None:
        raise DeviceError(f"refusing to bind {endpoint}: {PUBLIC_BIND_MESSAGE}")


def _secure(
    ctx: zmq.Context, sock: zmq.Socket, endpoint: str, insecure: bool, keys: ServerKeys | None
) -> CurveServer | None:
    """CURVE + key check when keys are given (loopback clients too); else warn on public binds.

    Returns the running authenticator, to be stopped when the server stops."""
    if keys is None:
        if not is_local_endpoint(endpoint) and insecure:
            log.warning("serving %s without encryption or authentication (--insecure)", endpoint)
        return None
    if insecure:
        log.warning("--insecure is ignored: --curve-keys is given, every client needs a key")
    curve = CurveServer(ctx, keys)
    curve.secure(sock)
    log.info("CurveZMQ on: %d authorized client key(s) from %s", len(keys.authorized), keys.source)
    return curve


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
    curve = _secure(ctx, sock, endpoint, insecure, keys)
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
    parser.add_argument("--backend", required=True, choices=BACKEND_NAMES)
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


# --------------------------------------------------------------------------- spawning
@dataclass
class ServerProcess:
    """A device server child process and the endpoint it announced."""

    process: subprocess.Popen[str]
    endpoint: str
    backend: str
    _stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque([], 50))

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_process(
    backend: str,
    *,
    python: str | None = None,
    bind: str = "tcp://127.0.0.1:0",
    exit_on_close: bool = True,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    startup_timeout_s: float = 120.0,
    new_session: bool = False,
) -> ServerProcess:
    """Spawn ``python -m devices.server`` and wait for its startup line (the real endpoint).

    Raises DeviceUnavailable with the server's own error line if it exits or stays silent;
    a server whose backend refused to start (DeviceUnavailable, e.g. no lava-loihi) gives
    just that reason.  ``new_session`` makes the server a process-group leader, so its own
    workers can be stopped with it.
    """
    cmd = [python or sys.executable, "-m", "devices.server", "--backend", backend, "--bind", bind]
    cmd += ["--exit-on-close"] if exit_on_close else []
    cmd += list(extra_args)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )
    except OSError as exc:
        raise DeviceUnavailable(f"cannot run `{' '.join(cmd)}`: {exc}") from None
    tail: collections.deque[str] = collections.deque([], 50)
    lines: queue.Queue[str | None] = queue.Queue()
    _drain(proc.stdout, lines.put, "stdout", eof=True)
    stderr_reader = _drain(proc.stderr, tail.append, "stderr")
    endpoint = _await_startup(proc, lines, stderr_reader, tail, startup_timeout_s, cmd)
    return ServerProcess(proc, endpoint, backend, tail)


def _drain(
    stream: Any, sink: Callable[[Any], None], what: str, *, eof: bool = False
) -> threading.Thread:
    """Read a child pipe to its end in a daemon thread, so the child never blocks on it.

    With ``eof`` the sink gets a final None when the pipe closes (the child exited)."""

    def run() -> None:
        for line in stream:
            line = line.rstrip("\n")
            log.debug("server %s: %s", what, line)
            sink(line)
        if eof:
            sink(None)

    thread = threading.Thread(target=run, name=f"device-server-{what}", daemon=True)
    thread.start()
    return thread


def _await_startup(
    proc: subprocess.Popen[str],
    lines: queue.Queue[str | None],
    stderr_reader: threading.Thread,
    tail: collections.deque[str],
    timeout_s: float,
    cmd: Sequence[str],
) -> str:
    deadline = time.monotonic() + timeout_s
    eof = False
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            eof = True
            break
        match = STARTUP_RE.match(line)
        if match:
            return match.group(2)
    if eof:  # stdout closed: the server is exiting; collect its code and last words
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        why = "closed stdout" if eof else f"did not report ready within {timeout_s:g} s"
    else:
        why = f"exited with code {proc.returncode}"
    stderr_reader.join(2)
    error = _last_error(tail)
    refused = re.match(r"error: DeviceUnavailable: (.*)", error)
    if refused:  # the backend said why it cannot run there
        raise DeviceUnavailable(refused.group(1))
    raise DeviceUnavailable(f"device server `{' '.join(cmd)}` {why}: {error or 'no error output'}")


def _last_error(tail: Sequence[str]) -> str:
    for line in reversed(tail):
        if line.startswith(STARTUP_PREFIX):
            return line[len(STARTUP_PREFIX) :].strip()
    return " | ".join(list(tail)[-3:])


if __name__ == "__main__":
    sys.exit(main())
