"""open_backend(name): one entry point for every device the controller can drive."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devices.base import BaseBackend
from polystep_neuro.errors import DeviceUnavailable


def _torch_sim(precision: str) -> Callable[..., BaseBackend]:
    def make(**options: Any) -> BaseBackend:
        from devices.torch_sim import TorchSimBackend

        options.setdefault("precision", precision)
        return TorchSimBackend(**options)

    return make


BACKENDS: dict[str, tuple[Callable[..., BaseBackend], str]] = {
    "torch-sim": (_torch_sim("float32"), "PyTorch LIF simulator, float32 (CPU/CUDA)"),
    "torch-sim-fixed": (
        _torch_sim("loihi-fixed"),
        "PyTorch LIF simulator, Loihi 2 fixed point, bit-exact with Lava (CPU/CUDA)",
    ),
}


def backend_names() -> list[str]:
    return list(BACKENDS)


REMOTE_SCHEMES = ("tcp://", "ipc://")
_REMOTE_OPTIONS = ("timeout_s", "connect_timeout_s", "close_timeout_s", "retries", "connect")


def open_backend(name: str | Sequence[str], **options: Any) -> BaseBackend:
    """Open a backend by name (see ``backend_names()``), or a ``tcp://host:port`` endpoint.

    Options a backend does not take (e.g. ``device=`` for a remote server, whose device is
    chosen where it runs) are ignored for remote endpoints.
    """
    if isinstance(name, str) and name.startswith(REMOTE_SCHEMES):
        from devices.remote import RemoteBackend

        return RemoteBackend(name, **{k: v for k, v in options.items() if k in _REMOTE_OPTIONS})
    if isinstance(name, str) and name in BACKENDS:
        factory, _ = BACKENDS[name]
        return factory(**options)
    check_backend_name(str(name))
    raise DeviceUnavailable(f"backend {name!r} cannot be opened: give one name or endpoint")


def check_backend_name(name: str) -> None:
    """Fail fast (before any training) on a backend name that cannot be opened."""
    if name in BACKENDS or name.startswith(REMOTE_SCHEMES):
        return
    raise DeviceUnavailable(
        f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)} "
        "(or a device server address tcp://HOST:PORT)"
    )


def describe_backends() -> list[tuple[str, bool, str]]:
    """(name, usable here, what it is or why not) for `polystep-neuro devices list`."""
    rows = []
    for name, (_, what) in BACKENDS.items():
        rows.append((name, True, what + _cuda_note()))
    rows.append(
        (
            "tcp://HOST:PORT",
            True,
            "a device server: python -m devices.server --backend NAME --bind tcp://127.0.0.1:PORT",
        )
    )
    return rows


def _cuda_note() -> str:
    try:
        import torch
    except ImportError:  # the Lava env has no torch
        return "; torch not installed"
    return "; CUDA available" if torch.cuda.is_available() else "; CPU only here (no CUDA)"
