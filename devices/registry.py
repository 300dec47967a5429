"""open_backend(name): one entry point for every device the controller can drive.

A name is resolved to its ``devices.catalog`` record (``devices.names``: a backend name,
``ray:NAME``, a ``tcp://`` endpoint, or several endpoints), the options are checked
against what that record accepts, and the record's backend class is opened
(``devices.factories``; the ray backend here, above them, since its actors open those).
``backend_options`` lets a caller offer options (``device=``, ``timeout_s=``) without
knowing which backends take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from devices.base import BaseBackend
from devices.catalog import RAY_INSTALL, RECORDS, BackendRecord
from devices.factories import open_record
from devices.names import (
    RAY_PREFIX,
    REMOTE_SCHEMES,
    backend_names,
    check_backend_name,
    resolve,
)
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable

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


def open_backend(name: str | Sequence[str], **options: Any) -> BaseBackend:
    """Open a backend by name (see ``backend_names()``), a ``tcp://host:port`` endpoint, or
    several endpoints (a list, or one comma-separated string) to shard V across.

    An option the backend does not take is a DeviceError that lists the ones it does
    (offer optional ones through ``backend_options``).  Endpoints get ``curve_keys`` from
    $POLYSTEP_CURVE_KEYS unless it is given.
    """
    record, target = resolve(name)
    if record.family == "ray":
        return _open_ray(record, target, options)
    return open_record(record, target, options)


def _open_ray(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    record.check_options(options)  # before Ray is imported
    try:
        from devices.ray_backend import RayBackend
    except ImportError as exc:
        raise DeviceUnavailable(
            f"the ray backend needs Ray, which this Python does not have ({exc}): {RAY_INSTALL}"
        ) from None
    if target is not None:  # named "ray:NAME" (or "ray:A,B": one actor each)
        if "backend" in options:
            named = target if isinstance(target, str) else ",".join(target)
            raise DeviceError(f"'ray:{named}' names the backend already; leave out backend=")
        options = {**options, "backend": target}
    return RayBackend(**options)


def backend_options(name: str | Sequence[str], **offered: Any) -> dict[str, Any]:
    """The ``offered`` options that backend ``name`` takes, None values left out.

    ``open_backend(name, **backend_options(name, device=dev, timeout_s=t))`` gives a
    torch-sim its device and a server its timeout without the caller knowing which is
    which.  An unknown name raises as ``open_backend`` would."""
    record, _ = resolve(name)
    return {k: v for k, v in offered.items() if v is not None and record.accepts(k)}


def describe_backends() -> list[tuple[str, bool, str]]:
    """(name, usable here, what it is or why not) for `polystep-neuro devices list`."""
    rows = []
    for record in RECORDS.values():
        usable, note = record.usable_here()
        rows.append((record.pattern or record.name, usable, record.description + note))
    return rows
