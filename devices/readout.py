"""The host's readout of output copies, around any backend.

A network whose output layer holds several copies of each class (``LayerSpec.copies``,
``deploy``'s tie splitting) runs on the device as the plain network, every copy a neuron of
its own; a class's count is the sum over its copies.  :class:`Readout` loads that plain
network on the backend it wraps and sums the counts it returns, so the device layer, its
wire and Lava's parity never see copies, and everything above reads one count per class.
"""

from __future__ import annotations

from typing import Any

from polystep_neuro.core.network import NetworkSpec, class_counts


class Readout:
    """``inner`` (any backend) with the output-copies readout; everything else delegated."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.copies = 1

    def load(self, spec: NetworkSpec) -> None:
        self.inner.load(spec.device_network())
        self.copies = spec.output_copies

    @property
    def spec(self) -> NetworkSpec:
        """The loaded network as the device holds it (calibrated), read with the copies."""
        held = self.inner.spec
        return held if self.copies == 1 else held.with_readout_copies(self.copies)

    def evaluate(self, params: Any, inputs: Any) -> Any:
        return class_counts(self.inner.evaluate(params, inputs), self.copies)

    def evaluate_low_rank(self, params: Any, base: Any, u: Any, vt: Any, inputs: Any) -> Any:
        """The inner simulator's factored evaluation, read per class like ``evaluate``."""
        return class_counts(self.inner.evaluate_low_rank(params, base, u, vt, inputs),
                            self.copies)  # fmt: skip

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Readout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # capabilities, max_sets, describe, ...
        return getattr(self.inner, name)


def with_readout(backend: Any) -> Readout:
    """``backend`` wrapped (once) so that it takes networks with output copies."""
    return backend if isinstance(backend, Readout) else Readout(backend)
