"""Shared bookkeeping of the backends: the loaded spec, the one check of an evaluate call,
closing.  The contract itself (``Backend``, ``Capabilities``) is the ground floor's
(:mod:`polystep_neuro.core.contract`).  numpy-only: the Lava env imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from devices.catalog import BackendRecord
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError
from polystep_neuro.core.network import NetworkSpec

__all__ = ["BaseBackend"]


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

    def _adopt(
        self, record: BackendRecord, options: Mapping[str, Any], positional: tuple = ()
    ) -> dict[str, Any]:
        """Take this backend's name, precision and writable kinds from its catalog record;
        return its options checked, with the record's defaults for those not given."""
        self.name = record.name
        self.precision = record.precision or self.precision
        self.writable = record.writable
        return record.resolve_options(options, positional)

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
        if self.spec.output_copies != 1:  # the sum is the host's: a device gives raw counts
            raise DeviceError(
                f"{self.name}: this network counts each class over {self.spec.output_copies} "
                "output neurons, a readout the host does: open the backend through "
                "devices.readout.with_readout, or load spec.device_network() and sum the "
                "counts with core.network.class_counts"
            )
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
