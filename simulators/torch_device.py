"""Where torch work runs: ``resolve_device("auto" | "cpu" | "cuda[:N]")``.

Its own module so the simulator, the torch-sim backend and the host jobs choose a device
the same way without importing each other.  A device that is not there is a
``DeviceUnavailable`` (the machine lacks it), not a ``SpecError`` (nothing is wrong with
the network).
"""

from __future__ import annotations

import torch

from polystep_neuro.core.errors import DeviceUnavailable

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; asking for absent CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailable(
            f"unknown torch device {device!r} ({exc}); use 'auto', 'cpu' or 'cuda[:N]'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "device 'cuda' was asked for but CUDA is not available here; use 'cpu'"
        )
    return dev
