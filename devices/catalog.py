"""One record per backend: its name, family, precision, Lava mode, the options it takes
(with their defaults and checks), what it can rewrite at run time, and whether it is
usable here.

Every module that needs a backend fact reads it here (the registry, the device server, the
backends themselves, on both sides of the wire), so a name, a precision, a Lava mode and an
option's default are tied together in exactly one place.  Plain data: the catalog imports
no backend (``devices.factories`` opens them), and it is torch-free and Lava-free, since
the Lava env's device server reads these records too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from devices.options import Option, OptionTable, count, flag, number, optional, seconds
from polystep_neuro.core.contract import parameter_kinds
from polystep_neuro.core.errors import DeviceError, UnknownBackend
from simulators.lava_plan import RUNTIME_WRITABLE

__all__ = [
    "ALL_PARAMETERS",
    "BackendRecord",
    "LAVA_MODES",
    "LAVA_OPTIONS",
    "NAMED",
    "RAY_INSTALL",
    "RAY_OPTIONS",
    "RECORDS",
    "REMOTE_OPTIONS",
    "SHARDED_OPTIONS",
    "TORCH_OPTIONS",
    "lava_record",
    "record",
    "served_names",
    "torch_record",
]

RAY_INSTALL = 'pip install -e ".[ray]"'
LAVA_MODES = ("floating_pt", "fixed_pt", "loihi2")

# Every parameter a NetworkSpec has: what the torch simulator can rewrite per call.  What a
# Lava graph can rewrite is simulators.lava_plan's RUNTIME_WRITABLE (read by the records).
ALL_PARAMETERS = parameter_kinds(("weight", "bias", "du", "dv", "vth", "v_bias"))


# --------------------------------------------------------------------------- options
TORCH_OPTIONS = OptionTable(
    Option(
        "device",
        "auto",
        "where the simulator runs: 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'",
    ),
    Option(
        "chunk_elements",
        1 << 27,
        "largest state tensor (T x V x B x widest layer) computed in one piece; a larger V "
        "is split",
        count(),
    ),
)
LAVA_OPTIONS = OptionTable(
    Option("venv", None, "the Lava venv (None: $POLYSTEP_LAVA_VENV, else the one setup-lava made)"),
    Option("timeout_s", 3600.0, "bound on one load or evaluate, in seconds", seconds()),
    Option("startup_timeout_s", 180.0, "bound on the Lava server's start, in seconds", seconds()),
)
REMOTE_OPTIONS = OptionTable(
    Option("timeout_s", 60.0, "bound on one try of load or evaluate, in seconds", seconds()),
    Option(
        "connect_timeout_s",
        10.0,
        "bound on one try of hello or ping, in seconds (never more than timeout_s)",
        seconds(),
    ),
    Option("close_timeout_s", 1.0, "bound on the close request, in seconds", seconds()),
    Option("retries", 3, "tries per request", count(1, 1000)),
    Option("connect", True, "ask the server for its capabilities at open", flag),
    Option(
        "curve_keys", None, "CurveZMQ client key folder or mapping (None: $POLYSTEP_CURVE_KEYS)"
    ),
    Option(
        "heartbeat_s",
        None,
        "ping first after this long without a reply, in seconds (None: never)",
        optional(seconds(inclusive=True), "never"),
    ),
)
SHARDED_OPTIONS = REMOTE_OPTIONS.with_meaning(
    "curve_keys", "one key folder or mapping for all endpoints, or a list with one each"
).plus(
    Option(
        "revive_after_s",
        30.0,
        "probe a dropped endpoint this often, in seconds (None: never)",
        optional(seconds(inclusive=True), "never"),
    )
)
RAY_OPTIONS = OptionTable(
    Option(
        "backend", None, "what each actor opens: one name, or a list with one name or endpoint each"
    ),
    Option(
        "workers",
        None,
        "how many actors for one name (None: 2)",
        optional(count(), "2, or one per listed backend"),
    ),
    Option("backend_options", None, "keywords for each actor's open_backend"),
    Option(
        "device",
        None,
        "the torch-sim device inside each actor (None: CUDA when the actor reserves a GPU, "
        "else CPU)",
    ),
    Option(
        "num_gpus",
        None,
        "GPUs Ray reserves per actor (None: 1 with device='cuda', else 0)",
        optional(number(inclusive=True), "1 with device='cuda', else 0"),
    ),
    Option("cpus_per_worker", 1.0, "CPUs Ray reserves per actor", number(inclusive=True)),
    Option(
        "num_cpus",
        None,
        "size of a local Ray this backend starts (None: Ray's choice)",
        optional(count(), "Ray's choice"),
    ),
    Option("address", None, "an existing Ray cluster to use instead of a local Ray"),
    Option(
        "start_timeout_s",
        300.0,
        "bound on starting the actors and opening their backends, in seconds",
        seconds(),
    ),
    Option(
        "worker_timeout_s",
        None,
        "bound on one actor's share of an evaluate, in seconds (None: no bound)",
        optional(seconds(), "no bound"),
    ),
)
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

    ``family`` says which backend class opens it (``devices.factories``); ``options`` is
    the table of what it accepts; ``status(record)`` says whether it is usable here and
    why, as a note for ``devices list``."""

    name: str
    description: str
    family: str  # "torch-sim" | "lava" | "remote" | "sharded" | "ray"
    precision: str | None = None  # None: whatever the backend it reaches runs
    lava_mode: str | None = None
    options: OptionTable = field(default_factory=OptionTable)
    writable: tuple[str, ...] = ()  # parameter kinds it can rewrite per call; () = as reached
    status: Callable[[BackendRecord], tuple[bool, str]] = _usable
    pattern: str = ""  # how it is written when not by its name, e.g. tcp://HOST:PORT
    served: bool = False  # `python -m devices.server --backend NAME` can host it
    option_hint: str = ""

    @property
    def takes_device(self) -> bool:
        """Whether ``device=`` means something to this backend (so callers need not sniff
        names: ``registry.backend_options`` keeps it only where this is True)."""
        return "device" in self.options

    @property
    def graph_mode(self) -> str:
        """The Lava graph a Lava record builds: Loihi 2 runs the fixed_pt graph."""
        if self.lava_mode is None:
            raise DeviceError(f"{self.name} is not a Lava backend")
        return "fixed_pt" if self.lava_mode == "loihi2" else self.lava_mode

    def accepts(self, option: str) -> bool:
        return option in self.options

    def check_options(self, options: Mapping[str, object]) -> None:
        """DeviceError naming every accepted option when ``options`` holds another."""
        self.options.refuse_unknown(self.name, options, self.option_hint)

    def resolve_options(self, options: Mapping[str, object], positional: tuple = ()) -> dict:
        """Every option's checked value, defaults filled in (see ``OptionTable.resolve``)."""
        return self.options.resolve(self.name, options, positional, self.option_hint)

    def usable_here(self) -> tuple[bool, str]:
        """(usable, a note to add to the description)."""
        return self.status(self)


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
        "torch-sim",
        precision=precision,
        options=TORCH_OPTIONS,
        writable=ALL_PARAMETERS,
        status=_torch_status,
        served=True,
        option_hint="(the name sets the precision: torch-sim is float32, torch-sim-fixed "
        "loihi-fixed)",
    )


def _lava(name: str, mode: str, precision: str, description: str) -> BackendRecord:
    lava = BackendRecord(
        name,
        description,
        "lava",
        precision=precision,
        lava_mode=mode,
        options=LAVA_OPTIONS,
        status=_lava_status,
        served=True,
        option_hint="(the name sets the Lava mode: lava is floating_pt, lava-fixed fixed_pt, "
        "loihi2 the chip)",
    )
    return replace(lava, writable=parameter_kinds(RUNTIME_WRITABLE[lava.graph_mode]))


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
        "ray",
        options=RAY_OPTIONS,
        status=_ray_status,
        option_hint="(options for the backend inside each actor go in backend_options={...})",
    ),
    BackendRecord(
        "remote",
        "a device server: python -m devices.server --backend NAME --bind tcp://127.0.0.1:PORT",
        "remote",
        options=REMOTE_OPTIONS,
        pattern="tcp://HOST:PORT",
        option_hint=_SERVER_HINT,
    ),
    BackendRecord(
        "sharded",
        "several device servers sharing the V parameter sets",
        "sharded",
        options=SHARDED_OPTIONS,
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
        raise UnknownBackend(
            f"unknown backend {name!r}; choose one of: {', '.join(NAMED)}"
        ) from None


def served_names() -> tuple[str, ...]:
    """What ``python -m devices.server --backend`` accepts."""
    return tuple(r.name for r in _ALL if r.served)


def torch_record(precision: str) -> BackendRecord:
    """The torch-sim record of a precision (float32, loihi-fixed)."""
    for r in _ALL:
        if r.family == "torch-sim" and r.precision == precision:
            return r
    precisions = [r.precision for r in _ALL if r.family == "torch-sim"]
    raise DeviceError(f"torch-sim precision must be one of {precisions}, got {precision!r}")


def lava_record(mode: str) -> BackendRecord:
    """The record of a Lava mode (floating_pt, fixed_pt, loihi2)."""
    for r in _ALL:
        if r.lava_mode == mode:
            return r
    raise DeviceError(f"Lava mode must be one of {list(LAVA_MODES)}, got {mode!r}")
