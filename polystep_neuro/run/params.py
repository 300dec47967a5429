"""Flatten the device-writable parameters of a NetworkSpec into one vector and back.

The optimiser moves one float vector; devices take ``{name: (V, *shape)}``.  Unflattening
a batch returns views into the candidate matrix where it can, clamped into each
parameter's valid range (decays in [0, 1], thresholds >= 0), since the search may step
outside it.

With ``scaling="auto"`` the vector holds each tensor divided by a typical magnitude of its
kind (weights: their RMS; thresholds: 10 % of the threshold; biases: 5 % of the layer's
threshold; decays: 0.05), so one step radius means a comparable change for a weight matrix
and for a threshold.  ``scaling="none"`` optimises the raw values.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec, split_param_name

_RANGES: dict[str, tuple[float | None, float | None]] = {
    "du": (0.0, 1.0),
    "dv": (0.0, 1.0),
    "vth": (0.0, None),
}


SCALINGS = ("none", "auto")


def typical_scale(spec: NetworkSpec, name: str) -> float:
    """A magnitude by which a change of ``name`` counts as "one unit" (see module doc)."""
    index, attr = split_param_name(name)
    layer = spec.layers[index]
    vth = layer.vth if layer.vth > 0 else 1.0
    if attr == "weight":
        rms = float(np.sqrt(np.mean(np.square(layer.weight, dtype=np.float64))))
        return rms if rms > 0 else 1.0 / float(np.sqrt(layer.n_in))
    if attr == "vth":
        return 0.1 * vth
    if attr in ("bias", "v_bias"):
        return 0.05 * vth
    return 0.05  # du, dv


class ParamVector:
    """The layout of the writable parameters inside the optimiser's vector."""

    def __init__(
        self,
        spec: NetworkSpec,
        names: Sequence[str] | None = None,
        scaling: str = "none",
        scales: Sequence[float] | None = None,
    ) -> None:
        """``scales`` (one positive number per name) overrides ``scaling``: the caller has
        chosen the unit of each tensor (e.g. :mod:`polystep_neuro.run.optimizers` sets them from
        the probe size each tensor needs)."""
        if scaling not in SCALINGS:
            raise SpecError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
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
        self.scaling = scaling if scales is None else "given"
        if scales is not None:
            self.scales = [float(v) for v in scales]
            if len(self.scales) != len(self.names) or not all(
                np.isfinite(v) and v > 0 for v in self.scales
            ):
                raise SpecError(
                    f"scales must be {len(self.names)} positive numbers (one per writable "
                    f"tensor {list(self.names)}), got {list(scales)}"
                )
        else:
            self.scales = [
                typical_scale(spec, name) if scaling == "auto" else 1.0 for name in self.names
            ]

    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    def flatten(self, spec: NetworkSpec, device: torch.device | str = "cpu") -> torch.Tensor:
        """The spec's current values of the writable parameters as one float32 vector."""
        values = spec.parameters()
        parts = [
            torch.as_tensor(np.asarray(values[n], np.float32) / np.float32(scale)).reshape(-1)
            for n, scale in zip(self.names, self.scales, strict=True)
        ]
        return torch.cat(parts).to(device)

    def unflatten(self, x: torch.Tensor, skip: Collection[str] = ()) -> dict[str, torch.Tensor]:
        """(N, dim) candidates -> {name: (N, *shape)}, clamped into valid ranges; the
        tensors in ``skip`` left out (a caller that hands them over in another form)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SpecError(f"candidates must be (N, {self.dim}), got {tuple(x.shape)}")
        out = {}
        bounds = zip(self.names, self.scales, self.offsets[:-1], self.offsets[1:], strict=True)
        for name, scale, start, stop in bounds:
            if name in skip:
                continue
            value = x[:, start:stop].reshape(x.shape[0], *self.shapes[name])
            if scale != 1.0:
                value = value * scale
            lo, hi = _RANGES.get(name.split(".")[1], (None, None))
            if lo is not None or hi is not None:
                value = value.clamp(lo, hi)
            out[name] = value
        return out

    def to_spec(self, spec: NetworkSpec, x: torch.Tensor) -> NetworkSpec:
        """The spec with the writable parameters set from one vector ``x`` (dim,)."""
        one = self.unflatten(x.detach().reshape(1, -1).cpu())
        return spec.with_params({name: value[0].numpy() for name, value in one.items()})
