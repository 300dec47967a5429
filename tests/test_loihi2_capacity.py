"""Loihi 2 capacity checks (simulators.loihi2_capacity): host-only, numpy, no Lava needed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from polystep_neuro.core.errors import CapacityError, DeviceError, SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators import fixed_point as fp
from simulators import loihi2_capacity as cap
from simulators.lava_plan import DeviceNet, Layout, choose_layout

DEMO_READOUT = ("fc1.weight", "lif1.v_bias")  # what the demo adapts


def _demo(writable: tuple[str, ...] = DEMO_READOUT) -> NetworkSpec:
    return NetworkSpec.random([64, 512, 10], 25, seed=0, writable=writable)


def test_published_defaults() -> None:
    limits = cap.ChipLimits()
    assert (limits.cores, limits.max_neurons_per_core) == (128, 8192)
    assert limits.synapses_per_core() == 128 * 1024  # 8-bit weights: one byte each
    assert cap.ChipLimits.from_env({cap.CHIPS_ENV: "8"}).cores == 8 * 128
    with pytest.raises(DeviceError, match="POLYSTEP_LOIHI2_CHIPS must be a positive integer"):
        cap.ChipLimits.from_env({cap.CHIPS_ENV: "two"})
    with pytest.raises(DeviceError, match="cores_per_chip"):
        cap.ChipLimits(cores_per_chip=0)


def test_cores_of_a_layout() -> None:
    spec = _demo()
    one = cap.check_one_replica(spec, cap.ChipLimits())
    # hidden: 512 neurons x 64 inputs -> 2048 per core (memory) -> 1 core;
    # readout: 10 neurons x 512 inputs -> 256 per core -> 1 core
    assert [(lc.kind, lc.neurons_per_core, lc.cores) for lc in one] == [
        ("shared", 2048, 1),
        ("stack", 256, 1),
    ]
    # 64 readout replicas: 640 neurons at 256 per core -> 3 cores, plus the shared layer
    assert cap.cores_needed(spec, Layout(64, 1, 1), cap.ChipLimits()) == 4
    # every layer varied: the readout is block-diagonal, R*512 synapses per neuron
    full = _demo(("fc0.weight", "fc1.weight"))
    lcs = cap.layout_cores(full, Layout(4, 1, 0), cap.ChipLimits())
    assert [(lc.neurons, lc.fan_in, lc.cores) for lc in lcs] == [(2048, 64, 1), (40, 2048, 1)]


def test_layout_that_fits_runs_in_one_run() -> None:
    plan = cap.check_spec(_demo(), 64)
    assert (plan.runs, plan.run_sizes, plan.replicas_per_run) == (1, (64,), 64)
    assert plan.cores_per_run == 4 <= plan.cores_available == 128
    assert "64 parameter sets in 1 run(s) (64)" in cap.summary(plan)
    # nothing writable: one copy serves every set
    frozen = cap.plan_runs(_demo(()), 10, cap.ChipLimits())
    assert (frozen.runs, frozen.run_sizes, frozen.cores_per_run) == (1, (10,), 2)


def test_v_that_does_not_fit_splits_into_runs() -> None:
    # all weights varied: 51 replicas of 64-512-10 fit on one chip (115 of 128 cores)
    full = _demo(("fc0.weight", "fc1.weight"))
    limits = cap.ChipLimits()
    plan = cap.plan_runs(full, 200, limits)
    assert plan.replicas_per_run == 51 and plan.cores_per_run == 115
    assert plan.runs == 4 and plan.run_sizes == (51, 51, 51, 47)
    assert sum(plan.run_sizes) == 200
    assert cap.fits(full, Layout(51, 1, 0), limits)
    assert not cap.fits(full, Layout(52, 1, 0), limits)
    # two chips hold more replicas per run, so fewer runs
    two = cap.plan_runs(full, 200, cap.ChipLimits(chips=2))
    assert two.replicas_per_run > 51 and two.runs < 4 and sum(two.run_sizes) == 200
    # small limits: 5 cores of 16 neurons; a replica of 12-20-16-4 beyond the shared
    # first layer (2 cores) takes 1 + 1/4 cores -> 2 replicas per run, 7 sets in 4 runs
    small = cap.ChipLimits(cores_per_chip=5, max_neurons_per_core=16, synaptic_memory_bytes=1024)
    spec = NetworkSpec.random([12, 20, 16, 4], 16, writable=("fc1.weight", "lif2.v_bias"))
    plan = cap.plan_runs(spec, 7, small)
    assert plan.run_sizes == (2, 2, 2, 1) and plan.runs == 4
    # a graph cap below the chip's bound wins
    assert cap.plan_runs(spec, 7, small, max_per_run=1).run_sizes == (1,) * 7


def test_layout_choice_respects_the_chip() -> None:
    small = cap.ChipLimits(cores_per_chip=5, max_neurons_per_core=16, synaptic_memory_bytes=1024)
    spec = fp.calibrate(
        NetworkSpec.random([12, 20, 16, 4], 16, writable=("fc1.weight", "lif2.v_bias"))
    )
    net = DeviceNet(spec, "fixed_pt")
    free = choose_layout(net, 7, 8)
    assert not cap.fits(spec, free, small)  # unconstrained, the cost model takes more
    chosen = choose_layout(
        net, 7, 8, max_vertices=2, fits=lambda layout: cap.fits(spec, layout, small)
    )
    assert (chosen.replicas, chosen.parallel) == (2, 1) and cap.fits(spec, chosen, small)


def test_one_replica_that_cannot_fit_is_a_capacity_error() -> None:
    # published limits: a 2,000,000-neuron layer needs 245 cores of 8192 neurons
    wide = NetworkSpec.random([4, 2_000_000], 5, writable=("fc0.weight",))
    with pytest.raises(CapacityError) as info:
        cap.plan_runs(wide, 4, cap.ChipLimits())
    message = str(info.value)
    assert message.startswith("one replica does not fit on Loihi 2 (1 chip x 128 cores")
    assert "it needs 245 neuro-cores (layer 0: 2000000 neurons x 4 synapses -> 245)" in message
    assert "128 available; use a system with at least 2 chips (POLYSTEP_LOIHI2_CHIPS=2)" in message
    assert cap.plan_runs(wide, 4, cap.ChipLimits(chips=2)).run_sizes == (1, 1, 1, 1)
    # small limits: the demo network needs 4 + 1 cores of 128 neurons, 4 are there
    with pytest.raises(CapacityError) as info:
        cap.check_spec(_demo(), 8, cap.ChipLimits(cores_per_chip=4, max_neurons_per_core=128))
    assert "needs 5 neuro-cores (layer 0: 512 neurons x 64 synapses -> 4, layer 1: 10 " in str(
        info.value
    )
    # a neuron whose inputs exceed one core's synaptic memory never fits, whatever the chips
    fan_in = NetworkSpec.random([200_000, 3], 5, writable=("fc0.weight",))
    with pytest.raises(CapacityError) as info:
        cap.check_one_replica(fan_in, cap.ChipLimits(chips=64))
    message = str(info.value)
    assert "a neuron of layer 0 (fc0 -> lif0) has 200000 input synapses, 200000 B" in message
    assert "more than one core's 131072 B of synaptic memory" in message
    assert "give fc0 at most 131072 inputs (fewer inputs)" in message


def test_weight_ranges_are_checked() -> None:
    spec = fp.calibrate(_demo())
    cap.check_device_layers(fp.quantize_spec(spec))  # calibrated values are in range
    # a weight exponent set by hand outside Loihi 2's [-8, 7]
    layers = list(spec.layers)
    layers[1] = replace(layers[1], fixed_weight_exp=9)
    bad = NetworkSpec(layers, spec.num_steps, spec.writable)
    with pytest.raises(SpecError, match=r"layer 1: 1 weight_exp value\(s\) outside Loihi 2's"):
        cap.check_spec(bad, 8)
    # weight mantissas: odd or beyond 8 bits
    q = fp.quantize_spec(spec)
    w = q[0].weight.copy()
    w[0, 0], w[1, 1] = 300, 3
    with pytest.raises(SpecError) as info:
        cap.check_device_layers([replace(q[0], weight=w), q[1]])
    assert str(info.value).startswith(
        "layer 0: 2 weight value(s) outside Loihi 2's format (even integers in [-254, 254]), "
        "e.g. 300"
    )
    with pytest.raises(SpecError, match="bias_exp"):
        cap.check_values(1, "bias_exp", np.array([0, 8]))
    cap.check_values(1, "weight", np.array([[-254, 0, 254]]))
