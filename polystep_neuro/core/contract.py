"""The forward-only device contract: what every backend is (``Capabilities``) and does
(``Backend``: load once, evaluate many times, close).

The ground floor: the run floor drives a backend through this protocol alone, so a test
written against the in-process torch simulator is a test of the loop for every backend
(Lava, Loihi 2, remote).  numpy-free and torch-free: the Lava env imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from polystep_neuro.core.errors import DeviceError
from polystep_neuro.core.network import NetworkSpec

__all__ = ["Backend", "Capabilities", "parameter_kind", "parameter_kinds"]

_DENSE_ATTRS = ("weight", "bias")  # the Dense layer's (fc<i>); the rest are the LIF's (lif<i>)


def parameter_kind(name: str) -> str:
    """``"fc1.weight"`` -> ``"fc<i>.weight"``: the form ``Capabilities.writable`` uses."""
    prefix, _, attr = name.partition(".")
    return f"{prefix.rstrip('0123456789')}<i>.{attr}"


def parameter_kinds(attrs: Iterable[str]) -> tuple[str, ...]:
    """``("weight", "vth")`` -> ``("fc<i>.weight", "lif<i>.vth")``: what a device says it can
    rewrite (a simulator's list of attributes) in the form ``Capabilities.writable`` uses."""
    return tuple(f"fc<i>.{a}" if a in _DENSE_ATTRS else f"lif<i>.{a}" for a in attrs)


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
    """load once, evaluate V parameter sets on B input samples, close.

    After ``load``, every backend also has ``spec``: the network the device actually runs
    (calibrated on a fixed-point device).  It is left out of this runtime-checkable protocol
    because it raises until a network is loaded."""

    @property
    def capabilities(self) -> Capabilities: ...

    def load(self, spec: NetworkSpec) -> None: ...

    def evaluate(self, params: Mapping[str, Any], inputs: Any) -> Any:
        """params: {name: (V, *shape)} writable parameters; inputs: (B, T, N_in) spikes.
        Returns spike counts (V, B, N_out).  Pure given the loaded network (safe to retry)."""
        ...

    def close(self) -> None: ...
