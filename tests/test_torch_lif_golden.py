"""Hand-worked networks, asserted exactly, for both precisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators.torch_lif import TorchLIF

# Input spikes (T=5, 2 inputs): t0 [1,0], t1 [1,1], t2 [0,1], t3 [1,1], t4 [0,0]
INPUTS = np.array([[[1, 0], [1, 1], [0, 1], [1, 1], [0, 0]]], dtype=np.float32)


def test_float_golden_one_neuron() -> None:
    # W = [0.625, 0.5], du = 0.5, dv = 0.25, vth = 1.5, delay 1, zero reset (all dyadic: exact).
    # W.s per step: 0.625, 1.125, 0.5, 1.125, 0  -> delayed a = [0, 0.625, 1.125, 0.5, 1.125]
    # u = 0.5 u + a:   0, 0.625, 1.4375, 1.21875, 1.734375
    # v = 0.75 v + u:  t0 0; t1 0.625; t2 0.46875 + 1.4375 = 1.90625 > 1.5 spike -> 0;
    #                  t3 1.21875; t4 0.9140625 + 1.734375 = 2.6484375 spike -> 0
    layer = LayerSpec(weight=[[0.625, 0.5]], du=0.5, dv=0.25, vth=1.5, delay=1)
    spec = NetworkSpec([layer], num_steps=5)
    res = TorchLIF(spec).evaluate(None, INPUTS, record=True)
    assert res.spikes is not None and res.voltages is not None and res.currents is not None
    assert res.spikes[0][0, 0, :, 0].tolist() == [False, False, True, False, True]
    assert res.voltages[0][0, 0, :, 0].tolist() == [0.0, 0.625, 0.0, 1.21875, 0.0]
    assert res.currents[0][0, 0, :, 0].tolist() == [0.0, 0.625, 1.4375, 1.21875, 1.734375]
    assert res.counts.tolist() == [[[2]]]


def test_float_golden_delay0_subtract_with_reset_delay() -> None:
    # snnTorch's default Leaky: subtract reset, reset_delay=True, delay 0.  beta = 0.5, vth 1.
    # W.s = a = [0.625, 1.125, 0.5, 1.125, 0]
    # t0: r=0, v = 0.625;                       no spike
    # t1: r=0, v = 0.3125 + 1.125 = 1.4375;     spike (reset applied next step)
    # t2: r=1, v = 0.71875 + 0.5 - 1 = 0.21875; no spike
    # t3: r=0, v = 0.109375 + 1.125 = 1.234375; spike
    # t4: r=1, v = 0.6171875 + 0 - 1 = -0.3828125
    layer = LayerSpec(
        weight=[[0.625, 0.5]],
        du=1.0,
        dv=0.5,
        vth=1.0,
        delay=0,
        reset="subtract",
        reset_delay=True,
        neuron="leaky",
    )
    res = TorchLIF(NetworkSpec([layer], num_steps=5)).evaluate(None, INPUTS, record=True)
    assert res.voltages is not None
    assert res.voltages[0][0, 0, :, 0].tolist() == [0.625, 1.4375, 0.21875, 1.234375, -0.3828125]
    assert res.counts.tolist() == [[[2]]]


def test_fixed_golden_two_neurons() -> None:
    # Calibration fixed by hand: scale 64, weight_exp 0 -> device weight = 2*round(w*64/2).
    #   neuron 0: [0.625, 0.5] -> [40, 32];  neuron 1: [-0.3, 0.2] -> [-20, 12]
    #   vth = round(1.5*64) = 96 -> compared as 96 << 6 = 6144
    #   du = 0.5 -> round(2048) - 1 = 2047: u *= (4096 - 2048) / 4096, truncated toward zero
    #   dv = 0.1 -> round(409.6) = 410:     v *= 3686 / 4096, truncated toward zero
    # neuron 0: W.s = 40, 72, 32, 72, 0 -> delayed a = [0, 40, 72, 32, 72], a<<6 =
    #   [0, 2560, 4608, 2048, 4608]
    #   u: 0, 2560, 1280+4608=5888, 2944+2048=4992, 2496+4608=7104
    #   v: 0, 2560, trunc(2560*3686/4096)=2303 +5888 = 8191 > 6144 spike -> 0,
    #      4992, trunc(4992*3686/4096)=4492 + 7104 = 11596 spike -> 0
    # neuron 1: W.s = -20, -8, 12, -8, 0 -> a<<6 = [0, -1280, -512, 768, -512]
    #   u: 0, -1280, -640-512=-1152, -576+768=192, 96-512=-416
    #   v: 0, -1280, trunc(-1151.875)=-1151 -1152 = -2303, trunc(-2072.47)=-2072 +192 = -1880,
    #      trunc(-1691.82)=-1691 -416 = -2107      (floor would give -1152, -2073, -1692)
    layer = LayerSpec(
        weight=[[0.625, 0.5], [-0.3, 0.2]],
        du=0.5,
        dv=0.1,
        vth=1.5,
        delay=1,
        fixed_scale=64.0,
        fixed_weight_exp=0,
    )
    sim = TorchLIF(NetworkSpec([layer], 5), precision="loihi-fixed")
    res = sim.evaluate(None, INPUTS, record=True)
    assert res.voltages is not None and res.currents is not None
    assert res.currents[0][0, 0, :, 0].tolist() == [0, 2560, 5888, 4992, 7104]
    assert res.voltages[0][0, 0, :, 0].tolist() == [0, 2560, 0, 4992, 0]
    assert res.currents[0][0, 0, :, 1].tolist() == [0, -1280, -1152, 192, -416]
    assert res.voltages[0][0, 0, :, 1].tolist() == [0, -1280, -2303, -1880, -2107]
    assert res.counts.tolist() == [[[2, 0]]]


def test_fixed_golden_negative_weight_exp_floors() -> None:
    # weight_exp = -2: the activation is an arithmetic right shift, i.e. floor(acc / 4).
    # Device weights with scale 64*2**-2 = 16 and factor 16/2**-2 = 64: [-20, 12] as above.
    # acc = -20, -8, 12, -8, 0 -> >>2: -5, -2, 3, -2, 0 (floor, not truncation)
    # delayed a<<6 = [0, -320, -128, 192, -128]; du = 1 (no current memory) so u = a<<6.
    layer = LayerSpec(
        weight=[[-0.3, 0.2]],
        du=1.0,
        dv=1.0,
        vth=10.0,
        delay=1,
        fixed_scale=16.0,
        fixed_weight_exp=-2,
    )
    sim = TorchLIF(NetworkSpec([layer], 5), precision="loihi-fixed")
    res = sim.evaluate(None, INPUTS, record=True)
    assert res.currents is not None
    assert res.currents[0][0, 0, :, 0].tolist() == [0, -320, -128, 192, -128]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fixed_golden_on_cuda_matches_cpu() -> None:
    spec = NetworkSpec.random([20, 30, 5], 12, seed=3, writable="all")
    x = (np.random.default_rng(0).random((4, 12, 20)) < 0.4).astype(np.float32)
    for precision in ("float32", "loihi-fixed"):
        cpu = TorchLIF(spec, precision, "cpu").evaluate(None, x, record=True)
        gpu = TorchLIF(spec, precision, "cuda").evaluate(None, x, record=True)
        assert torch.equal(cpu.counts, gpu.counts.cpu())
