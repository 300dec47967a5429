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


_LAVA_OPTIONS = ("venv", "timeout_s", "startup_timeout_s")


def _lava(mode: str) -> Callable[..., BaseBackend]:
    def make(**options: Any) -> BaseBackend:
        from devices.lava import LavaBackend

        return LavaBackend(mode, **{k: v for k, v in options.items() if k in _LAVA_OPTIONS})

    return make


BACKENDS: dict[str, tuple[Callable[..., BaseBackend], str]] = {
    "torch-sim": (_torch_sim("float32"), "PyTorch LIF simulator, float32 (CPU/CUDA)"),
    "torch-sim-fixed": (
        _torch_sim("loihi-fixed"),
        "PyTorch LIF simulator, Loihi 2 fixed point, bit-exact with Lava (CPU/CUDA)",
    ),
    "lava": (_lava("floating_pt"), "Lava CPU simulator, floating_pt models (Lava env)"),
    "lava-fixed": (_lava("fixed_pt"), "Lava CPU simulator, bit-accurate fixed_pt models"),
    "loihi2": (
        _lava("loihi2"),
        "Loihi 2 chip via Lava's Loihi2HwCfg (needs lava-loihi: on Intel's cloud host run "
        "the device server there and use tcp://; see docs/loihi2.md)",
    ),
}
_LAVA_NAMES = ("lava", "lava-fixed", "loihi2")


def backend_names() -> list[str]:
    return list(BACKENDS)


REMOTE_SCHEMES = ("tcp://", "ipc://")
_REMOTE_OPTIONS = (
    "timeout_s",
    "connect_timeout_s",
    "close_timeout_s",
    "retries",
    "connect",
    "curve_keys",
    "heartbeat_s",
)
_SHARDED_OPTIONS = (*_REMOTE_OPTIONS, "revive_after_s")


def open_backend(name: str | Sequence[str], **options: Any) -> BaseBackend:
    """Open a backend by name (see ``backend_names()``), a ``tcp://host:port`` endpoint, or
    several endpoints (a list, or one comma-separated string) to shard V across.

    Options a backend does not take (e.g. ``device=`` for a remote server, whose device is
    chosen where it runs) are ignored for remote endpoints.  Endpoints get ``curve_keys``
    from $POLYSTEP_CURVE_KEYS unless it is given.
    """
    endpoints = _endpoint_list(name)
    if endpoints is not None and options.get("curve_keys") is None:
        from devices.security import keys_from_env

        options["curve_keys"] = keys_from_env()  # the CLI's way to pass keys
    if endpoints is not None and len(endpoints) > 1:
        from devices.sharded import ShardedBackend

        return ShardedBackend(
            endpoints, **{k: v for k, v in options.items() if k in _SHARDED_OPTIONS}
        )
    if endpoints is not None:
        from devices.remote import RemoteBackend

        remote = {k: v for k, v in options.items() if k in _REMOTE_OPTIONS}
        return RemoteBackend(endpoints[0], **remote)
    if isinstance(name, str) and name in BACKENDS:
        factory, _ = BACKENDS[name]
        return factory(**options)
    check_backend_name(str(name))
    raise DeviceUnavailable(f"backend {name!r} cannot be opened: give one name or endpoint")


def _endpoint_list(name: str | Sequence[str]) -> list[str] | None:
    """The endpoints named by ``name`` (a list or "tcp://a:1,tcp://b:2"), or None."""
    parts = name.split(",") if isinstance(name, str) else list(name)
    parts = [str(p).strip() for p in parts if str(p).strip()]
    if parts and all(p.startswith(REMOTE_SCHEMES) for p in parts):
        return parts
    return None


def check_backend_name(name: str) -> None:
    """Fail fast (before any training) on a backend name that cannot be opened."""
    if name in BACKENDS or _endpoint_list(name) is not None:
        return
    raise DeviceUnavailable(
        f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)} "
        "(or a device server address tcp://HOST:PORT, or several: tcp://A:P,tcp://B:P)"
    )


def describe_backends() -> list[tuple[str, bool, str]]:
    """(name, usable here, what it is or why not) for `polystep-neuro devices list`."""
    from devices.lava_env import lava_env_status

    lava_usable, lava_why = lava_env_status()
    rows = []
    for name, (_, what) in BACKENDS.items():
        if name == "loihi2":
            rows.append((name, False, what))
        elif name in _LAVA_NAMES:
            rows.append((name, lava_usable, f"{what}; {lava_why}"))
        else:
            rows.append((name, True, what + _cuda_note()))
    rows.append(
        (
            "tcp://HOST:PORT",
            True,
            "a device server: python -m devices.server --backend NAME --bind tcp://127.0.0.1:PORT",
        )
    )
    rows.append(
        ("tcp://A:P,tcp://B:P", True, "several device servers sharing the V parameter sets")
    )
    return rows


def _cuda_note() -> str:
    try:
        import torch
    except ImportError:  # the Lava env has no torch
        return "; torch not installed"
    return "; CUDA available" if torch.cuda.is_available() else "; CPU only here (no CUDA)"
