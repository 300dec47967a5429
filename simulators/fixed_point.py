"""Loihi 2 integer formats and the quantisation of a float NetworkSpec to device integers.

numpy-only at import time (the Lava env imports it).  The quantisers are written with
array methods shared by numpy arrays and torch tensors (``*``, ``/``, ``round``, ``clip``),
always on float64 copies, so the torch simulator and the Lava server turn the same float
parameters into the same integers bit for bit — the parity of the two backends depends
on it.  docs/fixed-point.md describes the formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec

DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT  # 4096
DU_OFFSET = 1  # Lava's ds_offset: the current decays by (du + 1) / 4096
ACT_SHIFT = 6
VTH_SHIFT = 6
UV_BITS = 24
UV_MAX = 1 << (UV_BITS - 1)  # 2**23
DECAY_MAX = 4095  # 12-bit unsigned du, dv
VTH_MAX = (1 << 17) - 1  # 17-bit unsigned threshold
BIAS_MANT_MIN, BIAS_MANT_MAX = -(1 << 12), (1 << 12) - 1  # 13-bit signed
BIAS_EXP_MAX = 7  # 3-bit unsigned
# Mixed-sign 8-bit weights lose their lowest bit on Loihi (even integers); keeping them in
# [-254, 254] also leaves them unchanged if Lava infers an excitatory or inhibitory matrix.
WEIGHT_MIN, WEIGHT_MAX = -254, 254
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -8, 7
# Calibration target: the threshold lands in (2**11, 2**12] device units, which resolves it to
# 0.05 % while leaving activations 32x the threshold before the 24-bit current wraps.
_VTH_TARGET = 4096.0
# The remedy every "this spec does not fit the device" error names.
CONVERT_REMEDY = (
    "convert it to the device's semantics: `polystep-neuro convert --spec FILE --out "
    "DEVICE.npz` (or --snntorch / --nir MODEL); pn.adapt, `polystep-neuro check` and "
    "`polystep-neuro deploy` convert by themselves"
)


@dataclass(frozen=True)
class FixedLayer:
    """One layer in device integers, as Lava's bit-accurate Dense + LIF take them."""

    weight: np.ndarray  # int32 (n_out, n_in), even values in [-254, 254]
    weight_exp: int
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray  # int32 (n_out,)
    bias_exp: np.ndarray  # int32 (n_out,)


def _f64(x: Any) -> Any:
    """A float64 copy of a numpy array or torch tensor (the type is kept)."""
    if hasattr(x, "double"):
        return x.double()
    return np.asarray(x, dtype=np.float64)


def weight_factor(layer: LayerSpec) -> float:
    """Float weight -> device weight integer multiplier (scale / 2**weight_exp)."""
    assert layer.fixed_scale is not None and layer.fixed_weight_exp is not None
    return layer.fixed_scale / float(2**layer.fixed_weight_exp)


def quantize_weight(w: Any, layer: LayerSpec) -> Any:
    """Float weights -> even integers in [-254, 254] (float64, integer-valued)."""
    half = _f64(w) * (weight_factor(layer) / 2.0)
    return half.round().clip(WEIGHT_MIN // 2, WEIGHT_MAX // 2) * 2.0


def quantize_vth(vth: Any, layer: LayerSpec) -> Any:
    """Float threshold -> 17-bit unsigned integer in activation units."""
    assert layer.fixed_scale is not None
    return (_f64(vth) * layer.fixed_scale).round().clip(0, VTH_MAX)


def quantize_du(du: Any) -> Any:
    """Current decay in [0, 1] -> 12-bit du, accounting for Lava's +1 offset."""
    return ((_f64(du) * DECAY_UNITY).round() - DU_OFFSET).clip(0, DECAY_MAX)


def quantize_dv(dv: Any) -> Any:
    """Voltage decay in [0, 1] -> 12-bit dv (no offset)."""
    return (_f64(dv) * DECAY_UNITY).round().clip(0, DECAY_MAX)


def quantize_bias(bias: Any, layer: LayerSpec) -> tuple[Any, Any]:
    """Float bias added to v each step -> (mantissa, exponent) with bias = mant << exp.

    The bias enters v without the 6-bit activation shift, hence the extra 2**6.
    The smallest exponent that fits the 13-bit mantissa is chosen per neuron.
    """
    assert layer.fixed_scale is not None
    scaled = _f64(bias) * (layer.fixed_scale * float(1 << ACT_SHIFT))
    magnitude = abs(scaled)
    exp = magnitude * 0.0
    for e in range(BIAS_EXP_MAX):
        exp = exp + (magnitude > BIAS_MANT_MAX * float(2**e))
    mant = (scaled / 2.0**exp).round().clip(BIAS_MANT_MIN, BIAS_MANT_MAX)
    return mant, exp


def resolution(spec: NetworkSpec, name: str) -> float:
    """The smallest change of parameter ``name`` (float units) the device integers resolve.

    A probe or a step below it rounds back to the same integers and changes nothing on the
    device, so the adaptation sets its probe radii from it.  0 when the spec is not calibrated
    for fixed point (a float device resolves everything)."""
    from polystep_neuro.core.network import split_param_name

    index, attr = split_param_name(name)
    layer = spec.layers[index]
    if layer.fixed_scale is None or layer.fixed_weight_exp is None:
        return 0.0
    if attr == "weight":
        return 2.0 / weight_factor(layer)  # even integers: a step of 2 device units
    if attr in ("bias", "v_bias"):
        return 1.0 / (layer.fixed_scale * (1 << ACT_SHIFT))  # one mantissa unit at exponent 0
    if attr == "vth":
        return 1.0 / layer.fixed_scale
    return 1.0 / DECAY_UNITY  # du, dv


def check_fixed_compatible(spec: NetworkSpec) -> None:
    """Loihi's LIF resets to zero in the same step and has no Dense bias of its own."""
    for i, layer in enumerate(spec.layers):
        if layer.reset != "zero" or layer.reset_delay:
            raise SpecError(
                f"layer {i}: Loihi 2 neurons reset to zero in the spiking step "
                f"(reset='zero', reset_delay=False); this layer has reset={layer.reset!r}, "
                f"reset_delay={layer.reset_delay}; {CONVERT_REMEDY}"
            )
        du_varies = f"lif{i}.du" in spec.writable
        if layer.bias is not None and (quantize_du(layer.du) != DECAY_MAX or du_varies):
            raise SpecError(
                f"layer {i}: a Dense bias can only be folded into the neuron bias on Loihi 2 "
                f"when du = 1 (no current memory) and du is not writable; du={layer.du}, "
                f"writable: {', '.join(spec.writable) or 'none'}; {CONVERT_REMEDY} (it folds "
                f"the bias into lif{i}.v_bias)"
            )


def peak_drive(layer: LayerSpec) -> float:
    """The largest synaptic current (float units) one neuron can reach: every input spiking
    on every step, through the row's positive or its negative weights, accumulated by the
    current decay ``du``."""
    w = np.asarray(layer.weight, dtype=np.float64)
    per_step = max(
        float(np.max(np.sum(np.clip(w, 0, None), axis=1))),
        float(np.max(np.sum(np.clip(-w, 0, None), axis=1))),
    )
    return per_step / max(float(layer.du), 1.0 / DECAY_UNITY)


def calibrate_layer(layer: LayerSpec) -> tuple[float, int]:
    """Choose (scale, weight_exp): weights use the full 8 bits, vth lands near 2**12 — unless
    the layer's peak current would then pass the 24-bit wrap, in which case the scale drops
    (coarser threshold) until it cannot.  A wrapped current flips a strong excitation into
    inhibition; networks whose weights are large against the threshold (a readout trained
    to fire hard) lose many points of accuracy to it otherwise."""
    wmax = float(np.max(np.abs(layer.weight)))
    base = WEIGHT_MAX / wmax if wmax > 0 else 1.0
    if layer.vth > 0:
        exp = math.floor(math.log2(_VTH_TARGET / (layer.vth * base)))
    else:
        exp = 0
    drive = peak_drive(layer)
    if drive > 0:
        headroom = (UV_MAX - 1) / ((1 << ACT_SHIFT) * drive * base)
        exp = min(exp, math.floor(math.log2(headroom)))
    exp = min(max(exp, WEIGHT_EXP_MIN), WEIGHT_EXP_MAX)
    return base * 2.0**exp, exp


def calibrate(spec: NetworkSpec, *, force: bool = False) -> NetworkSpec:
    """A copy of ``spec`` with every layer's fixed-point scale chosen (kept where set).

    The scale is part of the deployment (Lava fixes weight_exp when it builds the
    network), so it is chosen once, stored in the spec, and reused for every candidate.
    """
    layers = []
    for layer in spec.layers:
        if force or layer.fixed_scale is None:
            scale, exp = calibrate_layer(layer)
            layer = replace(layer, fixed_scale=scale, fixed_weight_exp=exp)
        layers.append(layer)
    return NetworkSpec(layers, spec.num_steps, spec.writable).validate()


def quantize_layer(layer: LayerSpec) -> FixedLayer:
    """The device integers of one calibrated layer."""
    if layer.fixed_scale is None or layer.fixed_weight_exp is None:
        raise SpecError("layer is not calibrated for fixed point: call fixed_point.calibrate(spec)")
    total_bias = layer.v_bias if layer.bias is None else layer.v_bias + layer.bias
    mant, exp = quantize_bias(total_bias, layer)
    return FixedLayer(
        weight=quantize_weight(layer.weight, layer).astype(np.int32),
        weight_exp=int(layer.fixed_weight_exp),
        du=int(quantize_du(layer.du)),
        dv=int(quantize_dv(layer.dv)),
        vth=int(quantize_vth(layer.vth, layer)),
        bias_mant=mant.astype(np.int32),
        bias_exp=exp.astype(np.int32),
    )


def quantize_spec(spec: NetworkSpec) -> list[FixedLayer]:
    """Calibrate (where needed) and quantise every layer."""
    check_fixed_compatible(spec)
    return [quantize_layer(layer) for layer in calibrate(spec).layers]


def dequantized(spec: NetworkSpec) -> NetworkSpec:
    """The float network the device integers stand for (for reports and plots)."""
    spec = calibrate(spec)
    layers = []
    for layer, fixed in zip(spec.layers, quantize_spec(spec), strict=True):
        assert layer.fixed_scale is not None
        bias = fixed.bias_mant * 2.0**fixed.bias_exp / (layer.fixed_scale * 2**ACT_SHIFT)
        layers.append(
            replace(
                layer,
                weight=fixed.weight / weight_factor(layer),
                bias=None,
                v_bias=bias,
                du=(fixed.du + DU_OFFSET) / DECAY_UNITY,
                dv=fixed.dv / DECAY_UNITY,
                vth=fixed.vth / layer.fixed_scale,
            )
        )
    return NetworkSpec(layers, spec.num_steps, spec.writable).validate()
