"""Loihi 2 integer formats and quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point as fp


def _layer(**kw) -> LayerSpec:
    base = dict(weight=[[0.5, -0.25], [0.1, 0.0]], vth=1.0, fixed_scale=100.0, fixed_weight_exp=1)
    base.update(kw)
    return LayerSpec(**base)


def test_weight_quantisation_is_even_and_clipped() -> None:
    layer = _layer()  # factor = 100 / 2 = 50
    q = fp.quantize_weight(np.array([0.5, -0.25, 0.11, 9.0, -9.0]), layer)
    # w*50/2: 12.5 -> 12 (half to even), -6.25 -> -6, 2.75 -> 3, then doubled; +-225 clip to +-127
    assert q.tolist() == [24.0, -12.0, 6.0, 254.0, -254.0]


def test_decays_thresholds_and_bias() -> None:
    layer = _layer()
    assert fp.quantize_du(np.array([1.0, 0.5, 0.0])).tolist() == [4095, 2047, 0]
    assert fp.quantize_dv(np.array([1.0, 0.5, 0.0])).tolist() == [4095, 2048, 0]
    assert float(fp.quantize_vth(np.array(1.0), layer)) == 100.0
    assert float(fp.quantize_vth(np.array(5000.0), layer)) == fp.VTH_MAX
    # bias enters v unshifted: 0.5 * 100 * 64 = 3200 fits the 13-bit mantissa with exp 0;
    # 2.0 * 6400 = 12800 needs exp 2 (12800 / 4 = 3200).
    mant, exp = fp.quantize_bias(np.array([0.5, 2.0, -2.0]), layer)
    assert mant.tolist() == [3200, 3200, -3200] and exp.tolist() == [0, 2, 2]


def test_numpy_and_torch_quantise_identically() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, size=(50, 40)).astype(np.float32)
    layer = LayerSpec(weight=w, vth=0.8)
    layer.fixed_scale, layer.fixed_weight_exp = fp.calibrate_layer(layer)
    a = fp.quantize_weight(w, layer)
    b = fp.quantize_weight(torch.from_numpy(w), layer).numpy()
    assert np.array_equal(a, b)
    m1, e1 = fp.quantize_bias(w[0], layer)
    m2, e2 = fp.quantize_bias(torch.from_numpy(w[0]), layer)
    assert np.array_equal(m1, m2.numpy()) and np.array_equal(e1, e2.numpy())


def test_calibration_uses_full_weight_range_and_places_threshold() -> None:
    layer = LayerSpec(weight=[[0.2, -0.4]], vth=1.0)
    scale, exp = fp.calibrate_layer(layer)
    layer.fixed_scale, layer.fixed_weight_exp = scale, exp
    assert np.abs(fp.quantize_weight(layer.weight, layer)).max() == 254
    vth = float(fp.quantize_vth(np.array(layer.vth), layer))
    assert 2048 < vth <= 4096


def test_dequantized_matches_device_integers() -> None:
    spec = fp.calibrate(NetworkSpec.random([6, 5], 5, seed=3))
    deq = fp.dequantized(spec)
    again = fp.quantize_spec(deq.with_params({}))
    first = fp.quantize_spec(spec)
    assert np.array_equal(again[0].weight, first[0].weight)
    assert again[0].vth == first[0].vth


def test_fixed_incompatibilities_are_reported() -> None:
    spec = NetworkSpec.random([3, 2], 5, seed=0, reset="subtract")
    with pytest.raises(SpecError, match="reset to zero in the spiking step"):
        fp.check_fixed_compatible(spec)
    spec = NetworkSpec.random([3, 2], 5, seed=0, bias=True, du=0.5)
    with pytest.raises(SpecError, match="Dense bias can only be folded"):
        fp.check_fixed_compatible(spec)
    fp.check_fixed_compatible(NetworkSpec.random([3, 2], 5, seed=0, bias=True, du=1.0))


def test_calibration_leaves_headroom_below_the_24_bit_current_wrap() -> None:
    # A readout trained to fire hard: weights ~8x the threshold from 256 inputs.  The
    # threshold target alone (vth near 2**12) would put the peak current far past 2**23.
    rng = np.random.default_rng(3)
    spec = NetworkSpec.random([256, 10], 6, seed=3, du=1.0, dv=0.1, vth=1.0)
    layer = spec.layers[0]
    layer.weight = rng.normal(0, 8.0, size=layer.weight.shape).astype(np.float32)
    spec = NetworkSpec([layer], 6)
    calibrated = fp.calibrate(spec).layers[0]
    fixed = fp.quantize_layer(calibrated)
    peak = np.clip(fixed.weight, 0, None).sum(axis=1).max() * 2.0 ** (fixed.weight_exp + 6)
    assert peak < 2**23
    assert fixed.vth >= 16  # the threshold still resolves to better than ~6 %
    # Every input spiking on every step: the recorded currents never wrap, so the fixed
    # network's counts are those of its dequantised float twin.
    from simulators.torch_lif import TorchLIF

    x = np.ones((1, 6, 256), dtype=np.float32)
    res = TorchLIF(fp.calibrate(spec), "loihi-fixed").evaluate(None, x, record=True)
    assert res.currents is not None
    u = res.currents[0][0, 0].numpy()
    assert np.abs(u).max() < 2**23
    # The old rule (threshold near 2**12 only) would have wrapped.
    old_exp = min(int(np.floor(np.log2(4096 / (254 / np.abs(layer.weight).max())))), 7)
    old_peak = np.clip(layer.weight, 0, None).sum(1).max() * 254 / np.abs(layer.weight).max()
    assert old_peak * 2.0 ** (old_exp + 6) > 2**23
