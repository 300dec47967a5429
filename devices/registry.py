"""open_backend(name): one entry point for every device the controller can drive.

A name is resolved to its ``devices.catalog`` record (a backend name, ``ray:NAME``, a
``tcp://`` endpoint, or several endpoints), the options are checked against what that
record accepts, and the record opens the backend.  ``backend_options`` lets a caller offer
options (``device=``, ``timeout_s=``) without knowing which backends take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devices.base import BaseBackend
from devices.catalog import NAMED, RECORDS, BackendRecord
from polystep_neuro.core.errors import DeviceUnavailable

__all__ = [
    "RAY_PREFIX",
    "REMOTE_SCHEMES",
    "backend_names",
    "backend_options",
    "check_backend_name",
    "describe_backends",
    "open_backend",
    "resolve",
]

RAY_PREFIX = "ray:"  # "ray:torch-sim-fixed" = open_backend("ray", backend="torch-sim-fixed")
REMOTE_SCHEMES = ("tcp://", "ipc://")


def backend_names() -> list[str]:
    return list(NAMED)


def resolve(name: str | Sequence[str]) -> tuple[BackendRecord, Any]:
    """The record ``name`` opens and its target: the endpoint(s) of a remote or sharded
    backend, the actors' backend(s) of ``ray:…``, or the name itself."""
    ray_inner = _ray_inner(name)
    if ray_inner is not None:
        return RECORDS["ray"], ray_inner
    endpoints = _endpoint_list(name)
    if endpoints is not None:
        if len(endpoints) > 1:
            return RECORDS["sharded"], endpoints
        return RECORDS["remote"], endpoints[0]
    if isinstance(name, str) and name in NAMED:
        return RECORDS[name], None if name == "ray" else name
    check_backend_name(str(name))
    raise DeviceUnavailable(f"backend {name!r} cannot be opened: give one name or endpoint")


def open_backend(name: str | Sequence[str], **options: Any) -> BaseBackend:
    """Open a backend by name (see ``backend_names()``), a ``tcp://host:port`` endpoint, or
    several endpoints (a list, or one comma-separated string) to shard V across.

    An option the backend does not take is a DeviceError that lists the ones it does
    (offer optional ones through ``backend_options``).  Endpoints get ``curve_keys`` from
    $POLYSTEP_CURVE_KEYS unless it is given.
    """
    record, target = resolve(name)
    if record.accepts("curve_keys") and options.get("curve_keys") is None:
        from devices.security import keys_from_env

        options["curve_keys"] = keys_from_env()  # the CLI's way to pass keys
    return record.open(target, **options)


def backend_options(name: str | Sequence[str], **offered: Any) -> dict[str, Any]:
    """The ``offered`` options that backend ``name`` takes, None values left out.

    ``open_backend(name, **backend_options(name, device=dev, timeout_s=t))`` gives a
    torch-sim its device and a server its timeout without the caller knowing which is
    which.  An unknown name raises as ``open_backend`` would."""
    record, _ = resolve(name)
    return {k: v for k, v in offered.items() if v is not None and record.accepts(k)}


def _ray_inner(name: str | Sequence[str]) -> str | list[str] | None:
    """What the actors of "ray:NAME" (or "ray:tcp://A:P,tcp://B:P", one each) run; or None."""
    if not isinstance(name, str) or not name.startswith(RAY_PREFIX):
        return None
    parts = [p.strip() for p in name[len(RAY_PREFIX) :].split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _endpoint_list(name: str | Sequence[str]) -> list[str] | None:
    """The endpoints named by ``name`` (a list or "tcp://a:1,tcp://b:2"), or None."""
    parts = name.split(",") if isinstance(name, str) else list(name)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    if parts and all(p.startswith(REMOTE_SCHEMES) for p in parts):
        return parts
    return None


def check_backend_name(name: str) -> None:
    """Fail fast (before any training) on a backend name that cannot be opened."""
    ray_inner = _ray_inner(name)
    if ray_inner is not None:
        inners = [ray_inner] if isinstance(ray_inner, str) else ray_inner
        for inner in inners:
            if inner == "ray" or _ray_inner(inner) is not None:
                raise DeviceUnavailable(f"{name!r}: a ray actor cannot run another ray backend")
            check_backend_name(inner)
        if inners:
            return
    if name in ("ray", RAY_PREFIX):
        raise DeviceUnavailable(
            "backend 'ray' needs to know what its actors run: name it ray:NAME, e.g. "
            "ray:torch-sim-fixed (or from Python: open_backend('ray', backend=NAME))"
        )
    if name in NAMED or _endpoint_list(name) is not None:
        return
    raise DeviceUnavailable(
        f"unknown backend {name!r}; choose one of: {', '.join(NAMED)} "
        "(or a device server address tcp://HOST:PORT, or several: tcp://A:P,tcp://B:P)"
    )


def describe_backends() -> list[tuple[str, bool, str]]:
    """(name, usable here, what it is or why not) for `polystep-neuro devices list`."""
    rows = []
    for record in RECORDS.values():
        usable, note = record.usable_here()
        rows.append((record.pattern or record.name, usable, record.description + note))
    return rows
