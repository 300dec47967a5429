"""One record per backend: its name, precision, Lava mode, accepted options, what it can
rewrite at run time, how to open it, and whether it is usable here.

Every module that needs a backend fact reads it here (the registry, the device server, the
Lava backends on both sides of the wire), so a name, a precision and a Lava mode are tied
together in exactly one place.  Torch-free and Lava-free at import: the Lava env's device
server reads these records too; factories import their backend only when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from polystep_neuro.core.errors import DeviceError, DeviceUnavailable

if TYPE_CHECKING:
    from devices.base import BaseBackend

__all__ = [
    "ALL_PARAMETERS",
    "BackendRecord",
    "LAVA_MODES",
    "RECORDS",
    "lava_record",
    "record",
    "served_names",
    "torch_record",
]

RAY_INSTALL = 'pip install -e ".[ray]"'
LAVA_MODES = ("floating_pt", "fixed_pt", "loihi2")


# --------------------------------------------------------------------------- parameters
def _kinds(attrs: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"fc<i>.{a}" if a in ("weight", "bias") else f"lif<i>.{a}" for a in attrs)


# Every parameter a NetworkSpec has: what the torch simulator can rewrite per call.
ALL_PARAMETERS = _kinds(("weight", "bias", "du", "dv", "vth", "v_bias"))
# What a built Lava graph can rewrite per call (simulators.lava_plan.RUNTIME_WRITABLE;
# tests check the two agree): Lava's fixed_pt LIF caches vth when the graph is built.
_LAVA_FLOAT_WRITABLE = _kinds(("weight", "bias", "v_bias", "vth"))
_LAVA_FIXED_WRITABLE = _kinds(("weight", "bias", "v_bias"))


# --------------------------------------------------------------------------- options
_TORCH_OPTIONS = {
    "device": "where the simulator runs: 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'",
    "chunk_elements": "largest state tensor (T x V x B x widest layer) computed in one "
    "piece; a larger V is split (default 2**27)",
}
_LAVA_OPTIONS = {
    "venv": "the Lava venv (default: $POLYSTEP_LAVA_VENV, else the one setup-lava made)",
    "timeout_s": "bound on one load or evaluate, in seconds (default 3600)",
    "startup_timeout_s": "bound on the Lava server's start, in seconds (default 180)",
}
_REMOTE_OPTIONS = {
    "timeout_s": "bound on one try of load or evaluate, in seconds (default 60)",
    "connect_timeout_s": "bound on one try of hello or ping, in seconds (default 10)",
    "close_timeout_s": "bound on the close request, in seconds (default 1)",
    "retries": "tries per request (default 3)",
    "connect": "ask the server for its capabilities at open (default True)",
    "curve_keys": "CurveZMQ client key folder or mapping (default: $POLYSTEP_CURVE_KEYS)",
    "heartbeat_s": "ping first after this long without a reply (default None: never)",
}
_SHARDED_OPTIONS = {
    **_REMOTE_OPTIONS,
    "curve_keys": "one key folder or mapping for all endpoints, or a list with one each",
    "revive_after_s": "probe a dropped endpoint this often, in seconds (None: never; default 30)",
}
_RAY_OPTIONS = {
    "backend": "what each actor opens: one name, or a list with one name or endpoint per actor",
    "workers": "how many actors for one name (default 2)",
    "backend_options": "keywords for each actor's open_backend",
    "device": "the torch-sim device inside each actor (default: CUDA when the actor reserves "
    "a GPU, else CPU)",
    "num_gpus": "GPUs Ray reserves per actor (default 1 with device='cuda', else 0)",
    "cpus_per_worker": "CPUs Ray reserves per actor (default 1)",
    "num_cpus": "size of a local Ray this backend starts",
    "address": "an existing Ray cluster to use instead of a local Ray",
    "start_timeout_s": "bound on starting the actors and opening their backends, in seconds "
    "(default 300)",
    "worker_timeout_s": "bound on one actor's share of an evaluate, in seconds (default None)",
}
_SERVER_HINT = (
    "(the backend, its precision and its device are chosen where the server runs: "
    "python -m devices.server --backend NAME --device DEV)"
)


# --------------------------------------------------------------------------- the record
def _usable(record: BackendRecord) -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class BackendRecord:
    """Everything the project knows about one backend, before any of its code is imported.

    ``factory(record, target, **options)`` opens it (``target``: the endpoint(s) for remote
    and sharded backends, the inner name(s) for ray, else the name); ``status(record)``
    says whether it is usable here and why, as a note for ``devices list``."""

    name: str
    description: str
    factory: Callable[..., BaseBackend]
    precision: str | None = None  # None: whatever the backend it reaches runs
    lava_mode: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)  # accepted keyword -> meaning
    writable: tuple[str, ...] = ()  # parameter kinds it can rewrite per call; () = as reached
    status: Callable[[BackendRecord], tuple[bool, str]] = _usable
    pattern: str = ""  # how it is written when not by its name, e.g. tcp://HOST:PORT
    served: bool = False  # `python -m devices.server --backend NAME` can host it
    option_hint: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def takes_device(self) -> bool:
        """Whether ``device=`` means something to this backend (so callers need not sniff
        names: ``registry.backend_options`` keeps it only where this is True)."""
        return "device" in self.options

    def accepts(self, option: str) -> bool:
        return option in self.options

    def check_options(self, options: Mapping[str, Any]) -> None:
        """DeviceError naming every accepted option when ``options`` holds another."""
        unknown = [name for name in options if name not in self.options]
        if unknown:
            accepted = ", ".join(self.options) or "none"
            hint = f" {self.option_hint}" if self.option_hint else ""
            raise DeviceError(
                f"the {self.name} backend takes no option {', '.join(map(repr, unknown))}; "
                f"it accepts: {accepted}{hint}"
            )

    def open(self, target: Any, **options: Any) -> BaseBackend:
        """Check ``options``, then open the backend (imports its stack only now)."""
        self.check_options(options)
        return self.factory(self, target, **options)

    def usable_here(self) -> tuple[bool, str]:
        """(usable, a note to add to the description)."""
        return self.status(self)


# --------------------------------------------------------------------------- factories
def _open_torch_sim(record: BackendRecord, target: Any, **options: Any) -> BaseBackend:
    from devices.torch_sim import TorchSimBackend

    return TorchSimBackend(record.precision or "float32", **options)


def _open_lava(record: BackendRecord, target: Any, **options: Any) -> BaseBackend:
    from devices.lava import LavaBackend

    return LavaBackend(record.lava_mode or "fixed_pt", **options)


def _open_remote(record: BackendRecord, target: Any, **options: Any) -> BaseBackend:
    from devices.remote import RemoteBackend

    return RemoteBackend(target, **options)


def _open_sharded(record: BackendRecord, target: Any, **options: Any) -> BaseBackend:
    from devices.sharded import ShardedBackend

    return ShardedBackend(target, **options)


def _open_ray(record: BackendRecord, target: Any, **options: Any) -> BaseBackend:
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
        options["backend"] = target
    return RayBackend(**options)


# --------------------------------------------------------------------------- status
def _torch_status(record: BackendRecord) -> tuple[bool, str]:
    try:
        import torch
    except ImportError:  # the Lava env has no torch
        return False, "; torch not installed"
    return True, "; CUDA available" if torch.cuda.is_available() else "; CPU only here (no CUDA)"


def _lava_status(record: BackendRecord) -> tuple[bool, str]:
    if record.lava_mode == "loihi2":  # never usable from a host: it is served on the chip's
        return False, ""
    from devices.lava_env import lava_env_status

    usable, why = lava_env_status()
    return usable, f"; {why}"


def _ray_status(record: BackendRecord) -> tuple[bool, str]:
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return False, f"; Ray not installed: {RAY_INSTALL}"
    return True, f"; Ray {importlib.metadata.version('ray')}"


# --------------------------------------------------------------------------- the records
def _torch(name: str, precision: str, description: str) -> BackendRecord:
    return BackendRecord(
        name,
        description,
        _open_torch_sim,
        precision=precision,
        options=_TORCH_OPTIONS,
        writable=ALL_PARAMETERS,
        status=_torch_status,
        served=True,
        option_hint="(the name sets the precision: torch-sim is float32, torch-sim-fixed "
        "loihi-fixed)",
    )


def _lava(name: str, mode: str, precision: str, description: str) -> BackendRecord:
    return BackendRecord(
        name,
        description,
        _open_lava,
        precision=precision,
        lava_mode=mode,
        options=_LAVA_OPTIONS,
        writable=_LAVA_FLOAT_WRITABLE if mode == "floating_pt" else _LAVA_FIXED_WRITABLE,
        status=_lava_status,
        served=True,
        option_hint="(the name sets the Lava mode: lava is floating_pt, lava-fixed fixed_pt, "
        "loihi2 the chip)",
    )


_ALL: tuple[BackendRecord, ...] = (
    _torch("torch-sim", "float32", "PyTorch LIF simulator, float32 (CPU/CUDA)"),
    _torch(
        "torch-sim-fixed",
        "loihi-fixed",
        "PyTorch LIF simulator, Loihi 2 fixed point, bit-exact with Lava (CPU/CUDA)",
    ),
    _lava("lava", "floating_pt", "float32", "Lava CPU simulator, floating_pt models (Lava env)"),
    _lava(
        "lava-fixed", "fixed_pt", "loihi-fixed", "Lava CPU simulator, bit-accurate fixed_pt models"
    ),
    _lava(
        "loihi2",
        "loihi2",
        "loihi-fixed",
        "Loihi 2 chip via Lava's Loihi2HwCfg (needs lava-loihi: on Intel's cloud host run "
        "the device server there and use tcp://; see docs/loihi2.md)",
    ),
    BackendRecord(
        "ray",
        "Ray actors sharing the V parameter sets, each running one backend: ray:torch-sim-fixed, "
        "ray:tcp://A:P,tcp://B:P, or open_backend('ray', backend=NAME, workers=N)",
        _open_ray,
        options=_RAY_OPTIONS,
        status=_ray_status,
        option_hint="(options for the backend inside each actor go in backend_options={...})",
    ),
    BackendRecord(
        "remote",
        "a device server: python -m devices.server --backend NAME --bind tcp://127.0.0.1:PORT",
        _open_remote,
        options=_REMOTE_OPTIONS,
        pattern="tcp://HOST:PORT",
        option_hint=_SERVER_HINT,
    ),
    BackendRecord(
        "sharded",
        "several device servers sharing the V parameter sets",
        _open_sharded,
        options=_SHARDED_OPTIONS,
        pattern="tcp://A:P,tcp://B:P",
        option_hint=_SERVER_HINT,
    ),
)
RECORDS: Mapping[str, BackendRecord] = MappingProxyType({r.name: r for r in _ALL})
# the names a user opens directly (remote and sharded are opened by address)
NAMED = tuple(r.name for r in _ALL if not r.pattern)


def record(name: str) -> BackendRecord:
    """The record of a backend name (``torch-sim`` ... ``ray``, ``remote``, ``sharded``)."""
    try:
        return RECORDS[name]
    except KeyError:
        raise DeviceUnavailable(
            f"unknown backend {name!r}; choose one of: {', '.join(NAMED)}"
        ) from None


def served_names() -> tuple[str, ...]:
    """What ``python -m devices.server --backend`` accepts."""
    return tuple(r.name for r in _ALL if r.served)


def torch_record(precision: str) -> BackendRecord:
    return next(r for r in _ALL if r.factory is _open_torch_sim and r.precision == precision)


def lava_record(mode: str) -> BackendRecord:
    """The record of a Lava mode (floating_pt, fixed_pt, loihi2)."""
    for r in _ALL:
        if r.lava_mode == mode:
            return r
    raise DeviceError(f"Lava mode must be one of {list(LAVA_MODES)}, got {mode!r}")
