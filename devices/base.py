"""The forward-only device contract every backend implements.

The controller only ever calls ``load`` once, ``evaluate`` many times and ``close`` — so a
test written against the in-process torch simulator is a test of the controller for every
backend (Lava, Loihi 2, remote).  numpy-only: the Lava env imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    "DeviceError",
    "DeviceUnavailable",
    "PolystepError",
    "SpecError",
]


@dataclass(frozen=True)
class Capabilities:
    """What a backend is and what it can do, as the controller (and `devices list`) sees it."""

    name: str
    precision: str  # "float32" | "loihi-fixed"
    max_vertices: int | None = None  # most parameter sets per evaluate call; None = no limit
    writable: tuple[str, ...] = field(default_factory=tuple)
    is_remote: bool = False
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["writable"] = list(self.writable)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Capabilities:
        try:
            return cls(
                name=str(data["name"]),
                precision=str(data["precision"]),
                max_vertices=None
                if data.get("max_vertices") is None
                else int(data["max_vertices"]),
                writable=tuple(data.get("writable", ())),
                is_remote=bool(data.get("is_remote", False)),
                device=str(data.get("device", "")),
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
    """Shared bookkeeping: the loaded spec, argument checks, context-manager use."""

    name = "base"
    precision = "float32"
    is_remote = False

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
        writable = self._spec.writable if self._spec is not None else ()
        return Capabilities(
            name=self.name,
            precision=self.precision,
            max_vertices=self.max_vertices(),
            writable=tuple(writable),
            is_remote=self.is_remote,
            device=self.describe(),
        )

    def max_vertices(self) -> int | None:
        return None

    def describe(self) -> str:
        return self.name

    def _check_call(self, params: Mapping[str, Any], inputs: Any) -> int:
        """Validate an evaluate call before any device work; returns V."""
        if self._closed:
            raise DeviceError(f"{self.name}: backend is closed")
        spec = self.spec
        num_sets = spec.check_param_sets(params)
        spec.check_inputs(inputs)
        return num_sets

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BaseBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
