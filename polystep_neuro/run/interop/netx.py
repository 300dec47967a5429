"""The calibrated integer network as a lava-dl netx HDF5 file (``write_netx``).

lava-dl's ``lava.lib.dl.netx.hdf5.Network`` builds a Lava graph from such a file: per layer a
Lava ``Dense`` and a ``LIF``, computed on Lava's CPU simulator (``Loihi2SimCfg``,
``fixed_pt``) with the bit-accurate models the ``lava-fixed`` backend uses.  The file holds the
integers of ``simulators.fixed_point.quantize_spec``, so it spikes exactly as ``lava-fixed``
and ``torch-sim-fixed`` do for the same spec and inputs, where netx can represent them.

Layout (read off lava-dl 0.6.0's ``netx/hdf5.py`` and ``netx/utils.py``)::

    layer/0: type "input", shape [n_in]             (no neuron: spikes go straight to fc0)
    layer/i: type "dense", shape [n_out], weight (n_out, n_in) int, bias (n_out,) int,
             neuron/{type "CUBA", iDecay, vDecay, vThMant, refDelay, gradedSpike}

netx's conventions, and what each means for a calibrated layer:

- ``iDecay``: netx passes ``iDecay - 1`` to Lava's LIF ``du`` -> ``iDecay = du + 1``, where
  ``du`` is the device integer (``round(4096 du) - 1``); ``vDecay = dv``; ``vThMant = vth``.
- weights: netx ignores any stored exponent.  It re-derives one from the stored 8-bit
  integers (its ``optimize_weight_bits``), which always comes out as ``a = W_file · s``: a
  weight exponent of 0.  A layer calibrated with exponent ``e`` is written as
  ``W_file = W << e`` (``e > 0``, exact only while ``W_file`` stays inside the 8-bit range
  Lava's Dense keeps: [-256, 254] mixed-sign, [0, 255] excitatory, [-255, 0] inhibitory) or
  ``W >> -e`` (``e < 0``, exact only when every weight is a multiple of ``2**-e``, since the
  device floors the shifted sum).  Anything else raises ``SpecError``.  The default
  calibration puts the threshold near 2**12 and usually needs ``e`` of 2-5, so calibrate with
  :func:`calibrate_for_netx` (``e = 0``, the threshold then resolved to about 1/250 of the
  largest weight) before adapting a network meant for netx.
- bias: netx fixes the neuron's ``bias_exp`` to 6 and stores only the mantissa, so the device
  bias ``bias_mant << bias_exp`` must be a multiple of 64 with ``bias / 64`` in the 13-bit
  range [-4096, 4095]; others raise ``SpecError`` (a float ``v_bias``/``fc{i}.bias`` is
  representable when it is a multiple of ``1 / fixed_scale``).
- delay: netx's Dense is Lava's, which delivers its output one step later, so every layer
  must have ``delay=1`` (netx's synaptic ``delay`` key adds delays on top of that one).
- reset: netx builds plain LIFs (reset to zero in the spiking step) without a
  ``reset_interval``: ``reset="zero", reset_delay=False``, as for every Loihi backend.
- an all-zero weight matrix: netx's ``optimize_weight_bits`` divides by the largest weight.

numpy and h5py only: the Lava env (where netx runs) may import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

try:
    import h5py
except ImportError as exc:  # an optional dependency
    raise ImportError(
        "polystep_neuro.run.interop.netx needs h5py: pip install 'polystep-neuro[netx]'"
    ) from exc

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec, refuse_output_copies
from simulators import fixed_point as fp

__all__ = ["NetxLayer", "calibrate_for_netx", "netx_layers", "round_biases_for_netx", "write_netx"]

NETX_BIAS_EXP = 6  # netx's hdf5.Network.get_neuron_params fixes bias_exp for CUBA neurons
BIAS_MIN, BIAS_MAX = -(1 << 12), (1 << 12) - 1  # Loihi 2's 13-bit bias mantissa


@dataclass(frozen=True)
class NetxLayer:
    """One dense layer as netx stores it (all integers)."""

    weight: np.ndarray  # (n_out, n_in), weight exponent 0
    bias: np.ndarray  # (n_out,), scaled by 2**6 on the device
    i_decay: int
    v_decay: int
    v_th_mant: int


def calibrate_for_netx(spec: NetworkSpec, *, force: bool = False) -> NetworkSpec:
    """A copy of ``spec`` calibrated with weight exponent 0, which netx can store exactly.

    The scale maps the largest |weight| to 254 (all 8 bits), lowered where the threshold
    would pass 17 bits or the peak current the 24-bit wrap (as ``fixed_point.calibrate``
    does).  Layers that are already calibrated keep their calibration unless ``force``.
    """
    layers = []
    for layer in spec.layers:
        if force or layer.fixed_scale is None:
            wmax = float(np.max(np.abs(layer.weight)))
            scale = fp.WEIGHT_MAX / wmax if wmax > 0 else 1.0
            if layer.vth > 0:
                scale = min(scale, fp.VTH_MAX / float(layer.vth))
            drive = fp.peak_drive(layer)
            if drive > 0:
                scale = min(scale, (fp.UV_MAX - 1) / ((1 << fp.ACT_SHIFT) * drive))
            layer = replace(layer, fixed_scale=scale, fixed_weight_exp=0)
        layers.append(layer)
    return NetworkSpec(layers, spec.num_steps, spec.writable).validate()


def round_biases_for_netx(spec: NetworkSpec) -> tuple[NetworkSpec, list[float]]:
    """A copy of calibrated ``spec`` whose every neuron bias is the nearest one netx stores (a
    multiple of 64 device units; a Dense bias folded into the neuron's), and per layer the
    largest change as a share of the layer's threshold.  An approximation, exact only where
    nothing moved: the returned spec is what the netx file holds, so lava-fixed and
    torch-sim-fixed run it bit for bit."""
    unit = 1 << NETX_BIAS_EXP
    layers, changes = [], []
    for layer, fixed in zip(spec.layers, fp.quantize_spec(spec), strict=True):
        assert layer.fixed_scale is not None
        total = _device_bias(fixed)
        rounded = np.round(total / unit).astype(np.int64) * unit
        threshold = max(int(fixed.vth), 1) << fp.ACT_SHIFT  # v is compared in these units
        changes.append(float(np.max(np.abs(rounded - total), initial=0)) / threshold)
        v_bias = (rounded / (layer.fixed_scale * float(1 << fp.ACT_SHIFT))).astype(np.float32)
        layers.append(replace(layer, bias=None, v_bias=v_bias))
    out = NetworkSpec(layers, spec.num_steps, spec.writable).validate()
    for i, fixed in enumerate(fp.quantize_spec(out)):
        total = _device_bias(fixed)
        if np.any(total % unit):  # float32 could not hold a rounded bias exactly
            raise SpecError(f"layer {i}: its rounded biases do not quantise to netx's grid")
    return out, changes


def _file_weight(i: int, fixed: fp.FixedLayer) -> np.ndarray:
    w = fixed.weight.astype(np.int64)
    e = fixed.weight_exp
    if not np.any(w):
        raise SpecError(
            f"layer {i}: every weight quantises to 0, and netx's loader (optimize_weight_bits) "
            f"divides by the largest weight"
        )
    if e >= 0:
        out = w << e
        mixed = out.min() < 0 < out.max()
        lo = -256 if mixed else -255
        hi = 254 if mixed else 255
        if out.min() < lo or out.max() > hi:
            raise SpecError(
                f"layer {i}: calibrated with weight exponent {e}, the device weights reach "
                f"[{out.min()}, {out.max()}], but netx stores exponent-0 weights in [{lo}, {hi}] "
                f"(it derives the exponent from the stored 8-bit values); recalibrate: export "
                f"--recalibrate (Python: interop.netx.calibrate_for_netx; a network calibrated "
                f"by deploy usually needs --round-biases too)"
            )
        return out
    step = 1 << -e
    if np.any(w % step):
        raise SpecError(
            f"layer {i}: calibrated with weight exponent {e}, which floors W·s / 2**{-e} on the "
            f"device, but netx stores exponent-0 weights and these are not all multiples of "
            f"{step}; recalibrate: export --recalibrate (Python: "
            f"interop.netx.calibrate_for_netx)"
        )
    return w // step


def _device_bias(fixed: fp.FixedLayer) -> np.ndarray:
    """Each neuron's bias in device units, ``bias_mant << bias_exp`` (int64)."""
    return fixed.bias_mant.astype(np.int64) << fixed.bias_exp.astype(np.int64)


def _file_bias(i: int, fixed: fp.FixedLayer) -> np.ndarray:
    total = _device_bias(fixed)
    unit = 1 << NETX_BIAS_EXP
    bad = np.flatnonzero(total % unit)
    if bad.size:
        k = int(bad[0])
        raise SpecError(
            f"layer {i}: neuron {k}'s bias is {int(total[k])} device units, but netx fixes "
            f"bias_exp = {NETX_BIAS_EXP} and can only store multiples of {unit} "
            f"({bad.size} neuron(s) affected); `polystep-neuro export --round-biases` (or "
            f"interop.netx.round_biases_for_netx) rounds them and reports the change"
        )
    mant = total // unit
    if mant.min() < BIAS_MIN or mant.max() > BIAS_MAX:
        raise SpecError(
            f"layer {i}: biases need mantissas in [{mant.min()}, {mant.max()}] with netx's "
            f"bias_exp = {NETX_BIAS_EXP}, outside the 13-bit range [{BIAS_MIN}, {BIAS_MAX}]"
        )
    return mant


def netx_layers(spec: NetworkSpec) -> list[NetxLayer]:
    """The integers netx will load for ``spec`` (calibrated where needed, as
    ``quantize_spec`` does), or ``SpecError`` naming what netx cannot represent."""
    spec.validate()
    refuse_output_copies(spec, "a netx file")
    for i, layer in enumerate(spec.layers):
        if layer.delay != 1:
            raise SpecError(
                f"layer {i}: delay={layer.delay}; netx builds Lava Dense layers, which deliver "
                f"their output one step later (delay=1)"
            )
    out = []
    for i, fixed in enumerate(fp.quantize_spec(spec)):
        out.append(
            NetxLayer(
                weight=_file_weight(i, fixed),
                bias=_file_bias(i, fixed),
                i_decay=int(fixed.du) + 1,
                v_decay=int(fixed.dv),
                v_th_mant=int(fixed.vth),
            )
        )
    return out


def write_netx(spec: NetworkSpec, path: str | os.PathLike[str]) -> None:
    """Write the calibrated integer network of ``spec`` as a netx HDF5 file."""
    layers = netx_layers(spec)
    try:
        with h5py.File(path, "w") as f:
            group = f.create_group("layer")
            first = group.create_group("0")
            first.create_dataset("type", data=np.array([b"input"]))
            first.create_dataset("shape", data=np.array([spec.n_in]))
            for i, layer in enumerate(layers, start=1):
                g = group.create_group(str(i))
                g.create_dataset("type", data=np.array([b"dense"]))
                g.create_dataset("shape", data=np.array([layer.weight.shape[0]]))
                g.create_dataset("weight", data=layer.weight.astype(np.int32))
                if np.any(layer.bias):
                    g.create_dataset("bias", data=layer.bias.astype(np.int32))
                neuron = g.create_group("neuron")
                neuron.create_dataset("type", data=np.array([b"CUBA"]))
                neuron.create_dataset("iDecay", data=layer.i_decay)
                neuron.create_dataset("vDecay", data=layer.v_decay)
                neuron.create_dataset("vThMant", data=layer.v_th_mant)
                neuron.create_dataset("refDelay", data=1)
                neuron.create_dataset("gradedSpike", data=False)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc}") from None
