"""The forward-only device contract every backend implements.

The controller only ever calls ``load`` once, ``evaluate`` many times and ``close`` — so a
test written against the in-process torch simulator is a test of the controller for every
backend (Lava, Loihi 2, remote).  numpy-only: the Lava env imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from devices.catalog import parameter_kind
from polystep_neuro.batch import CheckedBatch
from polystep_neuro.errors import (
    CapacityError,
    DeviceError,
    DeviceUnavailable,
    PolystepError,
    SpecError,
)
from polystep_neuro.network import NetworkSpec

__all__ = [
    "Backend",
    "BaseBackend",
    "Capabilities",
    "CapacityError",
    "CheckedBatch",
    "DeviceError",
    "DeviceUnavailable",
    "PolystepError",
    "SpecError",
]


@dataclass(frozen=True)
class Capabilities:
    """What a backend is and what it can do, as the controller (and `devices list`) sees it.

    ``writable`` lists the parameter kinds (``fc<i>.weight``, ``lif<i>.vth``, ...) the device
    can rewrite per evaluate, whatever network is loaded: a spec that marks another one
    writable is refused at ``load``.  ``address`` is where a remote device is reached
    ("" in process); ``device`` describes the device itself."""

    name: str
    precision: str  # "float32" | "loihi-fixed"
    max_sets: int | None = None  # most parameter sets per evaluate call; None = no limit
    writable: tuple[str, ...] = field(default_factory=tuple)
    is_remote: bool = False
    device: str = ""
    address: str = ""

    def can_write(self, name: str) -> bool:
        """Whether the device can rewrite parameter ``name`` (e.g. "fc1.weight") per call."""
        return parameter_kind(name) in self.writable

    def describe(self) -> str:
        """The device and, for a remote one, where it is: for people, not for parsing."""
        return f"{self.device} at {self.address}" if self.address else self.device

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["writable"] = list(self.writable)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities:
        """Also reads an older server's ``max_vertices`` (now ``max_sets``)."""
        try:
            max_sets = data.get("max_sets", data.get("max_vertices"))
            return cls(
                name=str(data["name"]),
                precision=str(data["precision"]),
                max_sets=None if max_sets is None else int(max_sets),
                writable=tuple(data.get("writable", ())),
                is_remote=bool(data.get("is_remote", False)),
                device=str(data.get("device", "")),
                address=str(data.get("address", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceError(f"device sent malformed capabilities: {exc}") from None


@runtime_checkable
class Backend(Protocol):
    """load once, evaluate V parameter sets on B input samples, close."""

    @property
    def capabilities(self) -> Capabilities: ...

    def load(self, spec: NetworkSpec) -> None: ...

    def evaluate(self, params: Mapping[str, Any], inputs: Any) -> Any:
        """params: {name: (V, *shape)} writable parameters; inputs: (B, T, N_in) spikes.
        Returns spike counts (V, B, N_out).  Pure given the loaded network (safe to retry)."""
        ...

    def close(self) -> None: ...


class BaseBackend:
    """Shared bookkeeping: the loaded spec, the one check of an evaluate call, closing.

    Subclasses implement ``run_batch``; ``evaluate`` checks the call once (``check_batch``)
    and hands the checked batch to it.  A backend that wraps another passes the checked
    batch on to the other's ``run_batch`` rather than checking it again."""

    name = "base"
    precision = "float32"
    is_remote = False
    writable: tuple[str, ...] = ()  # parameter kinds it can rewrite per call (catalog)

    def __init__(self) -> None:
        self._spec: NetworkSpec | None = None
        self._closed = False

    @property
    def spec(self) -> NetworkSpec:
        if self._spec is None:
            raise DeviceError(f"{self.name}: no network loaded; call load(spec) first")
        return self._spec

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            precision=self.precision,
            max_sets=self.max_sets(),
            writable=self.writable,
            is_remote=self.is_remote,
            device=self.describe(),
        )

    def max_sets(self) -> int | None:
        return None

    def describe(self) -> str:
        return self.name

    def evaluate(self, params: Mapping[str, Any], inputs: Any) -> Any:
        """The contract's evaluate: one check, then ``run_batch``."""
        return self.run_batch(self.check_batch(params, inputs))

    def check_batch(self, params: Mapping[str, Any], inputs: Any) -> CheckedBatch:
        """Validate an evaluate call before any device work (DeviceError once closed)."""
        self._check_open()
        return CheckedBatch.check(self.spec, params, inputs)

    def run_batch(self, batch: CheckedBatch) -> Any:
        """Counts (V, B, N_out) for a batch checked against this backend's spec."""
        raise NotImplementedError(f"{type(self).__name__} does not implement run_batch")

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"{self.name}: backend is closed")

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BaseBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
