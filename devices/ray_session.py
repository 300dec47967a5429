"""Who owns the Ray runtime in this process: the ``ray`` backend or the user.

A backend that finds Ray already initialised (by the user, a notebook, a test fixture)
uses it and never shuts it down.  A backend that starts Ray itself shares that runtime
with any later ray backend of the process, and the last of them to close shuts it down,
so closing one backend never pulls Ray from under another.
"""

from __future__ import annotations

import logging
import threading

import ray

from polystep_neuro.core.errors import DeviceError, DeviceUnavailable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_users = 0  # open backends using a Ray runtime that a backend started; 0 = none started
_local = False  # that runtime is a local Ray (fixed resources), not a cluster connection


def acquire(address: str | None, num_cpus: int | None) -> bool:
    """Make sure Ray is initialised; True when this caller must ``release()`` it later."""
    global _users, _local
    with _lock:
        if ray.is_initialized():
            if address is not None or num_cpus is not None:
                log.warning(
                    "Ray is already initialised in this process: address=%r and num_cpus=%r "
                    "are ignored (the running Ray is used as it is)",
                    address,
                    num_cpus,
                )
            if _users == 0:
                return False  # the user's runtime: theirs to shut down
            _users += 1
            return True
        if address is not None and num_cpus is not None:
            raise DeviceError(
                "num_cpus sizes a local Ray this backend starts; with address= (an existing "
                "cluster) leave it out: the cluster's nodes declare their own CPUs"
            )
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ...
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise DeviceUnavailable(
                f"could not start {where}: {type(exc).__name__}: {exc}"
            ) from None
        _users, _local = 1, address is None
        return True


def started_local() -> bool:
    """A backend started the running Ray on this machine, so its resources cannot grow."""
    return _users > 0 and _local


def release() -> None:
    """One backend that ``acquire``d a started runtime is done; the last shuts Ray down."""
    global _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and ray.is_initialized():
            ray.shutdown()
