"""Flatten the device-writable parameters of a NetworkSpec into one vector and back.

The optimiser moves one float vector; devices take ``{name: (V, *shape)}``.  Unflattening
a batch returns views into the candidate matrix (no copies), clamped into each
parameter's valid range (decays in [0, 1], thresholds >= 0), since the search may step
outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from polystep_neuro.errors import SpecError
from polystep_neuro.network import NetworkSpec

_RANGES: dict[str, tuple[float | None, float | None]] = {
    "du": (0.0, 1.0),
    "dv": (0.0, 1.0),
    "vth": (0.0, None),
}


class ParamVector:
    """The layout of the writable parameters inside the optimiser's vector."""

    def __init__(self, spec: NetworkSpec, names: Sequence[str] | None = None) -> None:
        self.names = tuple(spec.writable if names is None else names)
        if not self.names:
            raise SpecError(
                "nothing to adapt: the network has no writable parameters "
                "(set NetworkSpec.writable, e.g. ['fc1.weight'])"
            )
        shapes = spec.param_shapes()
        for name in self.names:
            if name not in shapes:
                raise SpecError(
                    f"unknown parameter name {name!r}; this network has: {', '.join(shapes)}"
                )
        self.shapes = {name: shapes[name] for name in self.names}
        self.sizes = [int(np.prod(self.shapes[name], dtype=np.int64)) for name in self.names]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()

    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    def flatten(self, spec: NetworkSpec, device: torch.device | str = "cpu") -> torch.Tensor:
        """The spec's current values of the writable parameters as one float32 vector."""
        values = spec.parameters()
        parts = [torch.as_tensor(np.asarray(values[n], np.float32)).reshape(-1) for n in self.names]
        return torch.cat(parts).to(device)

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, dim) candidates -> {name: (N, *shape)}, clamped into valid ranges."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SpecError(f"candidates must be (N, {self.dim}), got {tuple(x.shape)}")
        out = {}
        for name, start, stop in zip(self.names, self.offsets[:-1], self.offsets[1:], strict=True):
            value = x[:, start:stop].reshape(x.shape[0], *self.shapes[name])
            lo, hi = _RANGES.get(name.split(".")[1], (None, None))
            if lo is not None or hi is not None:
                value = value.clamp(lo, hi)
            out[name] = value
        return out

    def to_spec(self, spec: NetworkSpec, x: torch.Tensor) -> NetworkSpec:
        """The spec with the writable parameters set from one vector ``x`` (dim,)."""
        one = self.unflatten(x.detach().reshape(1, -1).cpu())
        return spec.with_params({name: value[0].numpy() for name, value in one.items()})
