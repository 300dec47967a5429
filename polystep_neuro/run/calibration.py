"""Per-neuron calibration of a deployed network against the trained one, on the device.

The device's semantics (zero reset in the spiking step, a one-step delay per layer) change
how often each neuron fires for the same input: a neuron that snnTorch's subtract reset lets
fire on every step loses the charge above its threshold on the device.  A gain on each
neuron's weights and an offset on its bias move its firing rate back.  The trained model's
own spike counts in every layer (the teacher, on the host) say where to:

    for each layer k, in order:
        cut the device network after layer k;
        score G gains x O offsets at once, every neuron of the layer taking candidate v's
        gain and offset in parameter set v (one device call, forward passes only);
        keep for each neuron the candidate whose counts are closest to the teacher's
        (mean squared difference over the samples), or its current values where none is.

The device's layer k answers later than the trained model's by its extra delays (one step
per layer for an snnTorch model on Lava), so its counts over the run are matched to the
trained model's over the inputs it has seen: the first ``T - lag`` steps.  A neuron's counts
depend only on its own weights and bias once the layers before it are fixed, so every
neuron of a layer finds its best candidate in the same call: the search costs G x O
parameter sets per layer, however many neurons the layer has.  A finer second grid around
the chosen values, and four times the samples, both scored worse on held-out data on the
deployment bench's networks (they fit the calibration samples' noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators.fixed_point import calibrate_layer

# Candidate gains on a neuron's weights and offsets on its bias (in units of the layer's
# threshold): 13 x 13 parameter sets per layer.
GAINS = tuple(float(g) for g in np.round(np.linspace(0.7, 1.9, 13), 6))
OFFSETS = tuple(float(o) for o in np.round(np.linspace(-0.3, 0.3, 13), 6))
SAMPLES = 512  # samples each candidate is scored on


@dataclass(frozen=True)
class LayerCalibration:
    """What the calibration did to one layer."""

    layer: int
    error_before: float  # mean squared count difference to the teacher, per sample and neuron
    error_after: float
    gains: tuple[float, float]  # smallest and largest gain chosen
    offsets: tuple[float, float]


def calibrate_neurons(
    backend: Any,
    spec: NetworkSpec,
    spikes: torch.Tensor,
    teacher_spikes: Sequence[np.ndarray],
    *,
    lags: Sequence[int] | None = None,
    gains: Sequence[float] = GAINS,
    offsets: Sequence[float] = OFFSETS,
    batch_size: int = 128,
) -> tuple[NetworkSpec, list[LayerCalibration], int]:
    """Calibrate every layer of ``spec`` (device semantics, uncalibrated for fixed point) on
    the open ``backend`` (module doc).  ``spikes`` (B, T, N_in) are the inputs,
    ``teacher_spikes`` the trained model's spike trains per layer on them; ``lags[k]``: the
    steps by which the device's layer k answers later than the trained model's (its extra
    delays up to k: one per layer for an snnTorch model on Lava), so that its counts over the
    run are matched to the trained model's over the inputs it has seen, the first
    ``T - lags[k]`` steps.  Returns the calibrated spec (fixed-point calibration dropped, so
    the device picks its integers for the new weights), what changed per layer, and the
    parameter sets sent, in minibatches of ``batch_size`` samples."""
    lags = [0] * len(spec.layers) if lags is None else list(lags)
    grid_g, grid_o = np.meshgrid(np.asarray(gains), np.asarray(offsets), indexing="ij")
    grid_g, grid_o = grid_g.ravel(), grid_o.ravel()
    current = _uncalibrated(spec)
    report: list[LayerCalibration] = []
    sets = 0
    for k in range(len(current.layers)):
        names = (f"fc{k}.weight", f"lif{k}.v_bias")
        layers = [*current.layers[:k], _room_for(current.layers[k], max(gains))]
        cut = NetworkSpec(layers, current.num_steps, names).validate()
        backend.load(cut)
        loaded = backend.spec.layers[k]
        weight = torch.as_tensor(loaded.weight, dtype=torch.float32)
        v_bias = torch.as_tensor(loaded.v_bias, dtype=torch.float32)
        g = torch.as_tensor(grid_g, dtype=torch.float32)
        o = torch.as_tensor(grid_o, dtype=torch.float32) * float(loaded.vth)
        params = {names[0]: g[:, None, None] * weight[None], names[1]: v_bias[None] + o[:, None]}
        counts = torch.as_tensor(backend.evaluate(params, spikes)).to(torch.float32).cpu()
        sets += len(grid_g) * max(1, -(-len(spikes) // batch_size))
        window = teacher_spikes[k][:, : max(1, current.num_steps - lags[k])]
        want = torch.as_tensor(window.sum(axis=1), dtype=torch.float32)
        error = ((counts - want[None]) ** 2).mean(dim=1)  # (V, n)
        identity = int(np.argmin(np.abs(grid_g - 1.0) + np.abs(grid_o)))
        best = error.argmin(dim=0)
        keep = error.gather(0, best[None])[0] < error[identity]
        best = torch.where(keep, best, torch.full_like(best, identity))
        chosen_g, chosen_o = grid_g[best.numpy()], grid_o[best.numpy()]
        current = _with_layer(current, k, chosen_g, chosen_o)
        report.append(
            LayerCalibration(
                layer=k,
                error_before=float(error[identity].mean()),
                error_after=float(error.gather(0, best[None]).mean()),
                gains=(float(chosen_g.min()), float(chosen_g.max())),
                offsets=(float(chosen_o.min()), float(chosen_o.max())),
            )
        )
    out = NetworkSpec(current.layers, spec.num_steps, spec.writable).validate()
    return out, report, sets


def _room_for(layer: LayerSpec, gain: float) -> LayerSpec:
    """``layer`` with a fixed-point calibration that leaves room for its weights times
    ``gain`` (none clips at the 8-bit limit while the candidates are scored)."""
    scale, exp = calibrate_layer(replace(layer, weight=layer.weight * np.float32(gain)))
    return replace(layer, fixed_scale=scale, fixed_weight_exp=exp)


def _uncalibrated(spec: NetworkSpec) -> NetworkSpec:
    layers = [replace(layer, fixed_scale=None, fixed_weight_exp=None) for layer in spec.layers]
    return NetworkSpec(layers, spec.num_steps, spec.writable).validate()


def _with_layer(spec: NetworkSpec, k: int, gains: np.ndarray, offsets: np.ndarray) -> NetworkSpec:
    layers = list(spec.layers)
    layer = layers[k]
    assert layer.v_bias is not None
    layers[k] = replace(
        layer,
        weight=(layer.weight * gains[:, None].astype(np.float32)).astype(np.float32),
        v_bias=(layer.v_bias + np.float32(layer.vth) * offsets.astype(np.float32)).astype(
            np.float32
        ),
        fixed_scale=None,
        fixed_weight_exp=None,
    )
    return NetworkSpec(layers, spec.num_steps, spec.writable).validate()
