"""Opening one backend from its catalog record: the torch simulator, a Lava server, one
device server or several.

Each family's backend class reads its own options through its record's table; this
module only picks the class (importing its stack, torch or pyzmq, when it is first
opened).  The ray backend, whose actors each open one of these, is opened by
``devices.registry`` above this module, so its actors use this one without a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devices.base import BaseBackend
from devices.catalog import BackendRecord
from devices.names import resolve
from devices.security import keys_from_env
from polystep_neuro.core.errors import DeviceError

__all__ = ["open_device", "open_record"]


def open_device(name: str | Sequence[str], **options: Any) -> BaseBackend:
    """``open_backend`` for every backend but ray (what a ray actor may run)."""
    record, target = resolve(name)
    if record.family == "ray":
        raise DeviceError(f"{name!r}: a ray actor cannot run another ray backend")
    return open_record(record, target, options)


def open_record(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    """Open ``record``'s backend at ``target`` (endpoint(s), or None).  Unknown options are
    refused before its stack is imported; endpoints get ``curve_keys`` from
    $POLYSTEP_CURVE_KEYS unless it is given (the CLI's way to pass keys)."""
    if record.accepts("curve_keys") and options.get("curve_keys") is None:
        options = {**options, "curve_keys": keys_from_env()}
    record.check_options(options)
    return _OPENERS[record.family](record, target, options)


def _torch_sim(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    from devices.torch_sim import TorchSimBackend

    return TorchSimBackend(record, **options)


def _lava(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    from devices.lava import LavaBackend

    return LavaBackend(record, **options)


def _remote(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    from devices.remote import RemoteBackend

    return RemoteBackend(target, **options)


def _sharded(record: BackendRecord, target: Any, options: dict[str, Any]) -> BaseBackend:
    from devices.sharded import ShardedBackend

    return ShardedBackend(target, **options)


_OPENERS: dict[str, Callable[[BackendRecord, Any, dict[str, Any]], BaseBackend]] = {
    "torch-sim": _torch_sim,
    "lava": _lava,
    "remote": _remote,
    "sharded": _sharded,
}
