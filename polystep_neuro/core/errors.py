"""Typed errors shared by the host library, the device layer and the Lava env.

They live in a dependency-free module because the Lava env (Python 3.10, no torch)
raises and re-creates them on its side of the wire.
"""

from __future__ import annotations


class PolystepError(Exception):
    """Base class: every error the tool raises on purpose derives from it."""


class SpecError(PolystepError, ValueError):
    """A NetworkSpec or a parameter set is malformed (shape, range, name, NaN)."""


class DeviceError(PolystepError, RuntimeError):
    """A device backend failed to do what was asked."""


class CapacityError(DeviceError):
    """The network (or one replica of it) does not fit on the device."""


class DeviceUnavailable(DeviceError):
    """The backend cannot be used here (missing env, unreachable server, no chip)."""


class UnknownBackend(DeviceUnavailable, ValueError):
    """A backend name that names none (a typo, not a missing device); still a
    ``DeviceUnavailable`` for the code that catches those."""


ERROR_TYPES: dict[str, type[PolystepError]] = {
    cls.__name__: cls
    for cls in (
        PolystepError,
        SpecError,
        DeviceError,
        CapacityError,
        DeviceUnavailable,
        UnknownBackend,
    )
}


def error_from_name(name: str, message: str) -> PolystepError:
    """Rebuild a typed error received over the wire; unknown names become DeviceError."""
    return ERROR_TYPES.get(name, DeviceError)(message)


class Interrupted(PolystepError):
    """The user stopped a run; a checkpoint was saved and ``--resume`` continues it."""
