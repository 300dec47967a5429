"""open_backend(name): one entry point for every device the controller can drive."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from devices.base import BaseBackend
from polystep_neuro.errors import DeviceError, DeviceUnavailable


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

# ---- ray: V split across Ray actors, each running one of the backends above -------------
RAY_PREFIX = "ray:"  # "ray:torch-sim-fixed" = open_backend("ray", backend="torch-sim-fixed")
_RAY_INSTALL = 'pip install -e ".[ray]"'


def _ray(**options: Any) -> BaseBackend:
    try:
        from devices.ray_backend import open_ray_backend
    except ImportError as exc:
        raise DeviceUnavailable(
            f"the ray backend needs Ray, which this Python does not have ({exc}): {_RAY_INSTALL}"
        ) from None
    return open_ray_backend(**options)


def _ray_inner(name: str | Sequence[str]) -> str | list[str] | None:
    """What the actors of "ray:NAME" (or "ray:tcp://A:P,tcp://B:P", one each) run; or None."""
    if not isinstance(name, str) or not name.startswith(RAY_PREFIX):
        return None
    parts = [p.strip() for p in name[len(RAY_PREFIX) :].split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _ray_status(what: str) -> tuple[bool, str]:
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return False, f"{what}; Ray not installed: {_RAY_INSTALL}"
    return True, f"{what}; Ray {importlib.metadata.version('ray')}"


BACKENDS["ray"] = (
    _ray,
    "Ray actors sharing the V parameter sets, each running one backend: ray:torch-sim-fixed, "
    "ray:tcp://A:P,tcp://B:P, or open_backend('ray', backend=NAME, workers=N)",
)


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
    ray_inner = _ray_inner(name)
    if ray_inner is not None:
        if "backend" in options:
            raise DeviceError(f"{name!r} names the backend already; leave out backend=")
        return _ray(backend=ray_inner, **options)
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
        elif name == "ray":
            rows.append((name, *_ray_status(what)))
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
