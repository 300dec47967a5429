"""CheckedBatch: V parameter sets and B input samples, validated once against a network.

A backend checks an ``evaluate`` call once, where it enters the process (the contract
boundary, a device server's request, a Ray actor's call), and hands the checked batch
inward: a remote client splits it along V, a server passes it to its backend, a Lava graph
runs it, none of them checking shapes again.  Arrays are kept as given (numpy or torch, on
any device) until a wire needs numpy: ``for_wire()`` makes float32 parameters and compact
inputs (binary spikes as uint8, 4x smaller than float32), and binary spikes then stay
uint8 down to the simulator or the Lava graph.

numpy-only (torch tensors are recognised by duck typing): the Lava env imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from polystep_neuro.core.network import NetworkSpec

__all__ = ["CheckedBatch", "as_numpy"]

_COMPACT_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8))


@dataclass(frozen=True)
class CheckedBatch:
    """``params`` {name: (V, *shape)} (writable names only) and ``inputs`` (B, T, N_in),
    shapes checked against one network; ``num_sets`` = V (1 for ``{}``), ``batch_size`` = B.

    Build it with ``CheckedBatch.check``; the derived batches (``sets``, ``for_wire``) carry
    the same guarantees without a second check."""

    params: Mapping[str, Any]
    inputs: Any
    num_sets: int
    batch_size: int

    @classmethod
    def check(cls, spec: NetworkSpec, params: Mapping[str, Any], inputs: Any) -> CheckedBatch:
        """SpecError for an unknown or non-writable name, a wrong shape, mixed V, B = 0."""
        num_sets = spec.check_param_sets(params)
        spec.check_inputs(inputs)
        return cls(dict(params), inputs, num_sets, int(inputs.shape[0]))

    @cached_property
    def binary(self) -> bool:
        """All inputs are 0 or 1 (bool inputs without a scan).  Computed on first use only,
        so a float backend that never asks pays nothing."""
        if str(getattr(self.inputs, "dtype", "")) in ("bool", "torch.bool"):
            return True
        x = self.inputs
        return bool(((x == 0) | (x == 1)).all())

    def sets(self, start: int, stop: int) -> CheckedBatch:
        """Parameter sets ``start:stop`` with all the inputs (views, no copy, no check)."""
        if not self.params:
            return self
        params = {name: value[start:stop] for name, value in self.params.items()}
        return self._derive(params=params, num_sets=stop - start)

    def for_wire(self) -> CheckedBatch:
        """numpy arrays for a message: float32 parameters; binary spikes as uint8 (bool and
        uint8 inputs as they are), other inputs as float32."""
        params = {name: as_numpy(value, np.float32) for name, value in self.params.items()}
        x = as_numpy(self.inputs)
        if x.dtype not in _COMPACT_DTYPES:
            x = x.astype(np.uint8 if self.binary else np.float32, copy=False)
        return self._derive(params=params, inputs=x)

    def _derive(self, **changes: Any) -> CheckedBatch:
        """A copy with ``changes`` that keeps a known ``binary`` (the inputs' 0/1-ness is the
        same in every form this module makes of them)."""
        out = replace(self, **changes)
        if "binary" in self.__dict__:
            out.__dict__["binary"] = self.__dict__["binary"]
        return out


def first_non_spike(inputs: Any) -> float | None:
    """The first input value other than 0 and 1, or None when every one is a spike (numpy
    array or torch tensor): what a fixed-point device's refusal shows as its example."""
    odd = inputs[(inputs != 0) & (inputs != 1)]
    return float(odd.reshape(-1)[0]) if odd.shape[0] else None


def as_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """numpy view of a numpy array or torch tensor (torch is never imported here)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr if dtype is None else arr.astype(dtype, copy=False)
