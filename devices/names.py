"""Which record a backend name opens: a backend name, ``ray:NAME``, a ``tcp://`` endpoint,
or several endpoints.

Below the registry, so the ray backend can check the names its actors will open without
importing the registry that opens it.
"""

from __future__ import annotations

import difflib
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from devices.catalog import NAMED, RECORDS, BackendRecord
from polystep_neuro.core.errors import DeviceUnavailable, UnknownBackend

__all__ = [
    "RAY_PREFIX",
    "REMOTE_SCHEMES",
    "backend_names",
    "check_backend_name",
    "endpoint_list",
    "ray_inner",
    "resolve",
    "same_backend",
]

RAY_PREFIX = "ray:"  # "ray:torch-sim-fixed" = open_backend("ray", backend="torch-sim-fixed")
REMOTE_SCHEMES = ("tcp://", "ipc://")


def backend_names() -> list[str]:
    return list(NAMED)


def resolve(name: str | Sequence[str]) -> tuple[BackendRecord, Any]:
    """The record ``name`` opens and its target: the endpoint(s) of a remote or sharded
    backend, the actors' backend(s) of ``ray:…``, or the name itself."""
    inner = ray_inner(name)
    if inner is not None:
        return RECORDS["ray"], inner
    endpoints = endpoint_list(name)
    if endpoints is not None:
        if len(endpoints) > 1:
            return RECORDS["sharded"], endpoints
        return RECORDS["remote"], endpoints[0]
    if isinstance(name, str) and name in NAMED:
        return RECORDS[name], None if name == "ray" else name
    check_backend_name(str(name))
    raise DeviceUnavailable(f"backend {name!r} cannot be opened: give one name or endpoint")


def ray_inner(name: str | Sequence[str]) -> str | list[str] | None:
    """What the actors of "ray:NAME" (or "ray:tcp://A:P,tcp://B:P", one each) run; or None."""
    if not isinstance(name, str) or not name.startswith(RAY_PREFIX):
        return None
    parts = [p.strip() for p in name[len(RAY_PREFIX) :].split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def endpoint_list(name: str | Sequence[str]) -> list[str] | None:
    """The endpoints named by ``name`` (a list or "tcp://a:1,tcp://b:2"), or None."""
    parts = name.split(",") if isinstance(name, str) else list(name)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    if parts and all(p.startswith(REMOTE_SCHEMES) for p in parts):
        return parts
    return None


def same_backend(a: str | Sequence[str], b: str | Sequence[str]) -> bool:
    """Whether two backend names open the same device(s): endpoints are compared by what
    their hosts resolve to (``tcp://localhost:5555`` is ``tcp://127.0.0.1:5555``), the
    rest as text (a resumed run must be scored where it started)."""
    ends_a, ends_b = endpoint_list(a), endpoint_list(b)
    if ends_a is None or ends_b is None:
        return _as_text(a) == _as_text(b)
    return [_endpoint_key(e) for e in ends_a] == [_endpoint_key(e) for e in ends_b]


def _as_text(name: str | Sequence[str]) -> str:
    return name if isinstance(name, str) else ",".join(str(n).strip() for n in name)


def _endpoint_key(endpoint: str) -> tuple[str, str, str]:
    """(transport, host as an address where it resolves, port); every loopback is one."""
    transport, _, address = endpoint.partition("://")
    host, _, port = address.rpartition(":")
    host = host.strip("[]").lower()
    if transport == "tcp" and host:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except (socket.gaierror, UnicodeError):
            addresses = {host}
        if all(_is_loopback(ip) for ip in addresses):
            return transport, "loopback", port
        host = min(addresses)
    return transport, host, port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


# Names users reach for that spelling distance maps elsewhere ('lava-sim' is closest to
# 'lava-fixed' by characters, but means Lava's float simulator).
MEANT = {
    "lava-sim": "lava", "lava-float": "lava", "lava-cpu": "lava", "loihi": "loihi2",
    "loihi-2": "loihi2", "torch": "torch-sim", "torch-fixed": "torch-sim-fixed",
    "sim": "torch-sim", "simulator": "torch-sim",
}  # fmt: skip


def check_backend_name(name: str) -> None:
    """Fail fast (before any training) on a backend name that cannot be opened."""
    inner = ray_inner(name)
    if inner is not None:
        inners = [inner] if isinstance(inner, str) else inner
        for one in inners:
            if one == "ray" or ray_inner(one) is not None:
                raise DeviceUnavailable(f"{name!r}: a ray actor cannot run another ray backend")
            try:
                check_backend_name(one)
            except UnknownBackend as exc:  # say it is the name inside ray: that is wrong
                raise UnknownBackend(f"{name!r}, what its actors run: {exc}") from None
        if inners:
            return
    if name in ("ray", RAY_PREFIX):
        raise DeviceUnavailable(
            "backend 'ray' needs to know what its actors run: name it ray:NAME, e.g. "
            "ray:torch-sim-fixed (or from Python: open_backend('ray', backend=NAME))"
        )
    if name in NAMED or endpoint_list(name) is not None:
        return
    key = name.replace("_", "-").lower()
    close = [MEANT[key]] if key in MEANT else difflib.get_close_matches(key, NAMED, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownBackend(
        f"unknown backend {name!r}; {guess}choose one of: {', '.join(NAMED)} "
        "(or a device server address tcp://HOST:PORT, or several: tcp://A:P,tcp://B:P)"
    )
