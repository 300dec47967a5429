"""Who may talk to a device server: the bind policy and CurveZMQ keys (pyzmq + stdlib only).

Bind policy: a server binds loopback unless told otherwise, and a non-loopback address
needs CurveZMQ keys or an explicit ``--insecure`` (``check_bind``, before the slow backend
import).  With keys, every client needs an authorized key, loopback ones too
(``secure_server_socket``).

Layout written by ``polystep-neuro devices keygen DIR`` (zmq.auth certificate files)::

    DIR/server.key            server public key   -> every client (pins the server)
    DIR/server.key_secret     server secret key   -> the server host only
    DIR/client.key            client public key
    DIR/client.key_secret     client secret key   -> the client host only
    DIR/authorized_clients/   public keys the server accepts (client.key; add more)

The server (``--curve-keys DIR``) reads ``server.key_secret`` and ``authorized_clients/``;
a client (``curve_keys=DIR``) reads ``client.key_secret`` and ``server.key``.  CURVE
encrypts and authenticates every connection, loopback ones included: once a server has
keys, a client without an authorized key gets no answer at all.

Why CURVE and not ssh alone: a tunnel protects one hop, but a server bound to a shared
network address is reachable by every host on it; CURVE makes the key, not the address,
the thing that grants access.  Imported by the server, so it runs in the Lava env too.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from polystep_neuro.core.errors import DeviceError, DeviceUnavailable

log = logging.getLogger(__name__)

SERVER_NAME = "server"
CLIENT_NAME = "client"
AUTHORIZED_DIR = "authorized_clients"
KEYS_ENV = "POLYSTEP_CURVE_KEYS"  # default key folder for clients (the CLI has no flag)
ZAP_DOMAIN = "polystep-neuro"  # the device server's sockets' (see secure_server_socket)
KEYGEN_HINT = "make keys with `polystep-neuro devices keygen DIR`"
_Z85_KEY_CHARS = 40

# monitor events that tell a client why its connection never carried a message
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# refusals no retry can fix: the server turned the key down, or one side has no keys.
# (FAILED_NO_DETAIL is not here: it is also what a server dying mid-handshake looks like.)
FATAL_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


@dataclass(frozen=True)
class ClientKeys:
    """What a client presents (its keypair) and the server key it pins."""

    public: bytes
    secret: bytes
    server: bytes
    source: str  # where they came from, for error messages


@dataclass(frozen=True)
class ServerKeys:
    """The server keypair and the client public keys it accepts."""

    public: bytes
    secret: bytes
    authorized: frozenset[bytes]
    source: str
    # each authorized public key's file name in authorized_clients/ (the log names who
    # connects by it: every student may run as the same user on the same host)
    names: Mapping[bytes, str] = field(default_factory=dict)


def require_curve() -> None:
    if not zmq.has("curve"):
        raise DeviceUnavailable(
            "this pyzmq's libzmq was built without CURVE security; install a pyzmq wheel "
            "(pip install --force-reinstall pyzmq), which bundles libzmq with CURVE"
        )


PUBLIC_BIND_MESSAGE = (
    "binding a non-loopback address needs CurveZMQ keys (--curve-keys DIR; make them with "
    "`polystep-neuro devices keygen DIR`) or, on a trusted network only, --insecure"
)


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


def port_problem(endpoint: str, *, bind: bool) -> str:
    """Why a ``tcp://HOST:PORT`` endpoint's port is unusable ("" when it is fine, or for
    ipc/inproc).  libzmq reads a port past 65535 as "any port", so it is checked here."""
    transport, _, address = endpoint.partition("://")
    if transport != "tcp":
        return ""
    lowest = 0 if bind else 1
    _, colon, port = address.rpartition(":")
    if colon and port.isdigit() and lowest <= int(port) <= 65535:
        return ""
    free = " (0: any free port)" if bind else ""
    return f"the port must be a number from {lowest} to 65535{free}, got {port or 'none'!r}"


def host_problem(endpoint: str) -> str:
    """Why a client's ``tcp://HOST:PORT`` host cannot be reached by name ("" when it
    resolves, is an address, or for ipc): libzmq resolves it in the background and keeps
    trying, so a misspelt name only showed as no reply after every try."""
    transport, _, address = endpoint.partition("://")
    host = address.rpartition(":")[0].strip("[]")
    if transport != "tcp" or not host or host == "*":
        return ""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return f"the host name {host!r} does not resolve ({exc.strerror})"
    return ""


def check_bind(endpoint: str, insecure: bool, curve_keys: Any = None) -> None:
    """DeviceError for a bad port, or a non-loopback bind with neither keys nor
    ``insecure``."""
    if "://" in endpoint and (problem := port_problem(endpoint, bind=True)):
        raise DeviceError(f"bad endpoint {endpoint!r}: {problem}")
    if not is_local_endpoint(endpoint) and not insecure and curve_keys is None:
        raise DeviceError(f"refusing to bind {endpoint}: {PUBLIC_BIND_MESSAGE}")


def secure_server_socket(
    ctx: zmq.Context, sock: zmq.Socket, endpoint: str, insecure: bool, keys: ServerKeys | None
) -> CurveServer | None:
    """CURVE + key check when keys are given (loopback clients too); else warn on public binds.
    Either way the socket gets a ZAP domain, which makes libzmq refuse peers that speak the
    legacy ZMTP 1.0/2.0 handshakes (no version negotiation, no security mechanism).

    Returns the running authenticator, to be stopped when the server stops."""
    sock.zap_domain = ZAP_DOMAIN.encode()
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


# --------------------------------------------------------------------------- keygen
def generate_keys(
    folder: str | os.PathLike[str], *, force: bool = False, client_only: bool = False
) -> dict[str, Path]:
    """Write a server and a client keypair and ``authorized_clients/client.key``; with
    ``client_only``, the client keypair alone (a user joining a shared server makes their
    own, so that no secret key travels: only the public ``client.key`` goes to the admin).

    Secret files are never readable by others: the pairs are made in a private (0700)
    staging folder inside ``folder``, made 0600 there, then moved into place.  Refuses to
    overwrite keys unless ``force`` (a new server key locks out every client that pinned
    the old one)."""
    require_curve()
    import zmq.auth

    out = Path(folder)
    names = {
        "server_public": out / f"{SERVER_NAME}.key",
        "server_secret": out / f"{SERVER_NAME}.key_secret",
        "client_public": out / f"{CLIENT_NAME}.key",
        "client_secret": out / f"{CLIENT_NAME}.key_secret",
        "authorized": out / AUTHORIZED_DIR / f"{CLIENT_NAME}.key",
    }
    if client_only:
        names = {k: v for k, v in names.items() if k.startswith("client_")}
    pairs = (CLIENT_NAME,) if client_only else (SERVER_NAME, CLIENT_NAME)
    existing = [str(p) for p in names.values() if p.exists()]
    if existing and not force:
        raise DeviceError(
            f"keys already exist ({', '.join(existing)}); pass --force to replace them "
            "(clients holding the old server key will no longer connect)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not client_only:
            (out / AUTHORIZED_DIR).mkdir(exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".keygen-", dir=out))  # mode 0700
        try:
            for name in pairs:
                zmq.auth.create_certificates(staging, name)
            for path in staging.iterdir():
                path.chmod(0o600 if path.name.endswith("_secret") else 0o644)
            if not client_only:
                shutil.copy2(staging / f"{CLIENT_NAME}.key", staging / "authorized.key")
                os.replace(staging / "authorized.key", names["authorized"])
            for name in pairs:
                for suffix in (".key", ".key_secret"):
                    os.replace(staging / f"{name}{suffix}", out / f"{name}{suffix}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise DeviceError(f"cannot write keys to {out}: {exc.strerror or exc}") from None
    return names


# --------------------------------------------------------------------------- loading
def server_keys(folder: str | os.PathLike[str]) -> ServerKeys:
    """Load a server's keys; fails (before any bind) with what is missing and how to fix it."""
    require_curve()
    import zmq.auth

    root = Path(folder)
    public, secret = _keypair(root / f"{SERVER_NAME}.key_secret", "server secret key")
    authorized_dir = root / AUTHORIZED_DIR
    if not authorized_dir.is_dir():
        raise DeviceError(f"no {authorized_dir} folder of client public keys; {KEYGEN_HINT}")
    try:
        authorized = frozenset(zmq.auth.load_certificates(authorized_dir))
        names = {}
        for path in sorted(authorized_dir.glob("*.key")):
            public, _ = zmq.auth.load_certificate(path)
            names[bytes(public)] = path.name
    except (OSError, ValueError) as exc:
        raise DeviceError(f"cannot read client keys in {authorized_dir}: {exc}") from None
    if not authorized:
        raise DeviceError(
            f"{authorized_dir} holds no client public keys (*.key), so no client could "
            f"connect; copy a client's .key file there or {KEYGEN_HINT}"
        )
    return ServerKeys(public, secret, authorized, str(root), names)


def client_keys(keys: str | os.PathLike[str] | Mapping[str, Any]) -> ClientKeys:
    """Client keys from a key folder (``client.key_secret`` + ``server.key``) or a mapping
    ``{"public_key", "secret_key", "server_key"}`` of Z85 strings."""
    require_curve()
    if isinstance(keys, Mapping):
        missing = [k for k in ("public_key", "secret_key", "server_key") if k not in keys]
        if missing:
            raise DeviceError(f"curve_keys mapping lacks {', '.join(missing)}")
        values = [_z85(keys[k], k) for k in ("public_key", "secret_key", "server_key")]
        return ClientKeys(*values, source="the curve_keys mapping")
    root = Path(keys)
    public, secret = _keypair(root / f"{CLIENT_NAME}.key_secret", "client secret key")
    server_key = root / f"{SERVER_NAME}.key"
    if not server_key.is_file() and (root / f"{CLIENT_NAME}.key_secret").is_file():
        raise DeviceError(  # a client-only folder (keygen --client-only) still waiting for it
            f"no server public key at {server_key}: get the server's server.key from whoever "
            "runs the server and put it there (this client's own keys are in place)"
        )
    server, _ = _keypair(server_key, "server public key", secret=False)
    return ClientKeys(public, secret, server, str(root))


def keys_from_env() -> str | None:
    """The key folder named by $POLYSTEP_CURVE_KEYS, if set (how the CLI gets keys)."""
    return os.environ.get(KEYS_ENV, "").strip() or None


def _keypair(path: Path, what: str, *, secret: bool = True) -> tuple[bytes, bytes]:
    import zmq.auth

    if not path.is_file():
        raise DeviceError(f"no {what} at {path}; {KEYGEN_HINT}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise DeviceError(f"cannot read {what} {path}: {exc}") from None
    if secret and not secret_key:
        raise DeviceError(f"{path} holds no secret key (is it the public .key file?)")
    return _z85(public, f"{what} in {path}"), _z85(secret_key or b"", f"{what} in {path}")


def _z85(value: Any, what: str) -> bytes:
    raw = value.encode("ascii") if isinstance(value, str) else bytes(value)
    if len(raw) == 0:
        return raw
    if len(raw) != _Z85_KEY_CHARS:
        raise DeviceError(f"{what} must be a {_Z85_KEY_CHARS}-character Z85 key")
    return raw


# --------------------------------------------------------------------------- sockets
def secure_client_socket(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Present the client keypair and pin the server key (before connect)."""
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
    sock.curve_serverkey = keys.server


class CurveServer:
    """CURVE on a server socket plus a ZAP handler that admits only authorized keys.

    pyzmq's ThreadAuthenticator answers the ZAP requests libzmq sends for every CURVE
    handshake; our callback checks the key and logs refusals, so an operator sees who
    was turned away (ZAP itself only tells the client)."""

    def __init__(self, ctx: zmq.Context, keys: ServerKeys) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.keys = keys
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("zmq.auth"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, _KeyCheck(keys.authorized))

    def secure(self, sock: zmq.Socket) -> None:
        sock.curve_server = True
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret

    def stop(self) -> None:
        self._auth.stop()


class _KeyCheck:
    def __init__(self, authorized: Iterable[bytes]) -> None:
        self.authorized = frozenset(authorized)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.authorized:
            return True
        log.warning(
            "rejected a CurveZMQ client whose public key %s is not in authorized_clients",
            key.decode("ascii", "replace"),
        )
        return False


# Handshakes failed without detail on one socket before that counts as a refusal.
REPEATED_FAILURES = 3


class HandshakeWatch:
    """The socket monitor of a client's current socket: the handshake events that say why
    no reply came (key rejected, keys missing, wrong server key)."""

    def __init__(self, keys: ClientKeys | None) -> None:
        self.keys = keys
        self._monitor: zmq.Socket | None = None
        self.events: list[tuple[int, int]] = []

    def attach(self, sock: zmq.Socket) -> None:
        """Watch ``sock`` (before it connects); forgets the previous socket's events."""
        self._monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.events = []

    def detach(self, sock: zmq.Socket) -> None:
        if self._monitor is not None:
            sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def register(self, poller: zmq.Poller) -> None:
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)

    def read(self, ready: Mapping[Any, int]) -> bool:
        """Take in the events ``ready`` (a poll's result) holds; True once the handshake
        was refused for good (no retry can fix it)."""
        if self._monitor is None or self._monitor not in ready:
            return False
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            self.events.append((int(event["event"]), int(event["value"])))
        return self.fatal

    @property
    def connected(self) -> bool:
        """The current socket's handshake succeeded: the server is there (and took the
        keys), so a reply that is late comes from a busy server, not a wrong address."""
        return any(event == zmq.EVENT_HANDSHAKE_SUCCEEDED for event, _ in self.events)

    @property
    def fatal(self) -> bool:
        """A refusal no retry fixes: a fatal event, or a handshake that failed without
        detail again and again (a wrong pinned server key: libzmq reconnects every 100 ms
        and fails the same way, so waiting out every try only cost 30 s)."""
        if any(event in FATAL_HANDSHAKE_EVENTS for event, _ in self.events):
            return True
        failed = sum(event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL for event, _ in self.events)
        return failed >= REPEATED_FAILURES

    def hint(self) -> str:
        return handshake_hint(self.events, self.keys)


def handshake_hint(events: Iterable[tuple[int, int]], keys: ClientKeys | None) -> str:
    """What a client's socket monitor events say about a missing reply ("" if nothing)."""
    seen = {event: value for event, value in events}
    if zmq.EVENT_HANDSHAKE_FAILED_AUTH in seen:
        return (
            "the server rejected this client's CurveZMQ key: copy "
            f"{_where(keys, 'client.key')} into the server's {AUTHORIZED_DIR}/ folder and "
            "restart the server"
        )
    # a NULL/CURVE mismatch shows up as FAILED_PROTOCOL, or as FAILED_NO_DETAIL when the
    # peer hangs up first (it races); a wrong pinned server key as FAILED_NO_DETAIL
    mismatch = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL in seen
    if not mismatch and zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL not in seen:
        return ""
    if keys is None:
        return (
            f"{'' if mismatch else 'the handshake failed, most likely because '}the server "
            "requires CurveZMQ keys and this client has none: pass curve_keys=DIR (or set "
            f"{KEYS_ENV}=DIR) with the client keys from `polystep-neuro devices keygen`"
        )
    if mismatch:
        return (
            "the handshake failed: this client uses CurveZMQ keys but the server does not "
            "(start it with --curve-keys DIR) or speaks another protocol"
        )
    return (
        f"the CurveZMQ handshake failed: the server key pinned in {_where(keys, 'server.key')} "
        "does not match the server's secret key (copy the server.key of that server), or "
        "the server runs without --curve-keys"
    )


def _where(keys: ClientKeys | None, name: str) -> str:
    if keys is None or keys.source.startswith("the "):
        return name
    return str(Path(keys.source) / name)
