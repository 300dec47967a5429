"""The low-rank first-layer prototype (x W^T + (x Vt^T) U^T) against materialised sets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators import fixed_point as fp
from simulators.fixed_point import calibrate_layer
from simulators.torch_lif import TorchLIF


def _dyadic_case(seed: int, sets: int = 7, rank: int = 3):
    """Weights in eighths, factors in quarters and units, 0/1 inputs: every sum either
    path forms is exact in float32, so the two must agree bit for bit."""
    rng = np.random.default_rng(seed)
    sizes = [24, 40, 6]
    spec = NetworkSpec.random(sizes, 9, seed=seed, dv=0.25, writable="all")
    spec.layers[0].weight = rng.integers(-8, 9, size=(40, 24)).astype(np.float32) / 8
    u = torch.as_tensor(rng.integers(-2, 3, size=(sets, 40, rank)) / 4, dtype=torch.float32)
    vt = torch.as_tensor(rng.integers(-1, 2, size=(sets, rank, 24)), dtype=torch.float32)
    u[3], vt[3] = u[2], vt[2]  # two sets with the same factors share their group
    fc1 = torch.as_tensor(spec.layers[1].weight)[None].repeat(sets, 1, 1)
    fc1 += torch.as_tensor(rng.integers(-2, 3, size=fc1.shape) / 16, dtype=torch.float32)
    x = torch.as_tensor(rng.random((5, 9, 24)) < 0.4, dtype=torch.float32)
    return spec, u, vt, {"fc1.weight": fc1}, x


def _assert_same_traces(sim: TorchLIF, summed, u, vt, others, x) -> None:
    """Counts and voltages of the low-rank sets equal the materialised ``summed`` weights'
    bit for bit, and the sets differ (the check is not vacuous)."""
    ref = sim.evaluate({"fc0.weight": summed, **others}, x, record=True)
    got = sim.evaluate_low_rank(others, u, vt, x, record=True)
    assert ref.voltages is not None and got.voltages is not None
    assert torch.equal(got.counts, ref.counts)
    for ours, theirs in zip(got.voltages, ref.voltages, strict=True):
        assert torch.equal(ours, theirs)
    assert int(ref.counts.sum()) > 0 and not torch.equal(ref.counts[0], ref.counts[1])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block", [None, 1, 40 * 5 * 2])
def test_low_rank_first_layer_equals_materialised_sets_bit_for_bit(
    seed: int, block: int | None
) -> None:
    spec, u, vt, others, x = _dyadic_case(seed)
    sim = TorchLIF(spec, "float32", block_elements=block, time_block=4)
    summed = torch.as_tensor(spec.layers[0].weight)[None] + torch.bmm(u, vt)
    _assert_same_traces(sim, summed, u, vt, others, x)


@pytest.mark.parametrize("seed", range(3))
def test_low_rank_sets_around_another_base_equal_materialised_sets(seed: int) -> None:
    # the adaptation loop's case: the factors move the current point's weights, not the
    # loaded ones; dyadic values keep both paths exact, so they must agree bit for bit
    spec, u, vt, others, x = _dyadic_case(seed)
    rng = np.random.default_rng(seed + 10)
    base = torch.as_tensor(rng.integers(-8, 9, size=(40, 24)) / 8, dtype=torch.float32)
    sim = TorchLIF(spec, "float32", time_block=4)
    ref = sim.evaluate({"fc0.weight": base[None] + torch.bmm(u, vt), **others}, x)
    got = sim.evaluate_low_rank(others, u, vt, x, base=base)
    loaded = sim.evaluate_low_rank(others, u, vt, x)
    assert torch.equal(got.counts, ref.counts)
    assert not torch.equal(loaded.counts, ref.counts)  # the base really was used


def _fixed_case(seed: int, sets: int = 7, rank: int = 3):
    """A loihi-fixed network calibrated with room for the probes (the largest weight maps
    to about 90 % of the 8-bit range), integer factors of -1, 0 and 1."""
    rng = np.random.default_rng(seed)
    spec = NetworkSpec.random([24, 40, 6], 9, seed=seed, writable="all")
    first = spec.layers[0]
    scale, exp = calibrate_layer(replace(first, weight=first.weight * np.float32(1.12)))
    spec.layers[0] = replace(first, fixed_scale=scale, fixed_weight_exp=exp)
    u = torch.as_tensor(rng.integers(-1, 2, size=(sets, 40, rank)), dtype=torch.float32)
    vt = torch.as_tensor(rng.integers(-1, 2, size=(sets, rank, 24)), dtype=torch.float32)
    u[3], vt[3] = u[2], vt[2]
    fc1 = torch.as_tensor(spec.layers[1].weight)[None].repeat(sets, 1, 1)
    fc1 += 0.05 * torch.as_tensor(rng.standard_normal(fc1.shape), dtype=torch.float32)
    x = torch.as_tensor(rng.random((5, 9, 24)) < 0.4, dtype=torch.float32)
    return spec, u, vt, {"fc1.weight": fc1}, x


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("int8", [False, None])
def test_fixed_point_low_rank_probes_equal_materialised_sets_bit_for_bit(
    seed: int, int8: bool | None
) -> None:
    """In loihi-fixed the probe is on the device's integer grid: the counts and voltages
    equal those of the materialised weights that quantise to the same device integers,
    with float or int8 GEMMs for the materialised sets."""
    spec, u, vt, others, x = _fixed_case(seed)
    sim = TorchLIF(spec, "loihi-fixed", time_block=4, int8_gemm=int8)
    summed = sim.low_rank_weights(u, vt)
    layer = sim.spec.layers[0]
    device = fp.quantize_weight(summed.double().numpy(), layer)
    loaded = fp.quantize_weight(layer.weight.astype(np.float64), layer)
    np.testing.assert_array_equal(device, loaded[None] + 2 * torch.bmm(u, vt).numpy())
    _assert_same_traces(sim, summed, u, vt, others, x)


def test_fixed_point_factors_must_be_integers_that_stay_in_range() -> None:
    spec, u, vt, others, x = _fixed_case(0)
    sim = TorchLIF(spec, "loihi-fixed")
    with pytest.raises(SpecError, match="must hold integers"):
        sim.evaluate_low_rank(others, u / 2, vt, x)
    with pytest.raises(SpecError, match="leave the device's 8-bit range"):
        sim.evaluate_low_rank(others, u * 40, vt, x)


def test_low_rank_owns_the_first_weights() -> None:
    spec, u, vt, others, x = _dyadic_case(0)
    with pytest.raises(SpecError, match="fc0.weight"):
        TorchLIF(spec).evaluate_low_rank({"fc0.weight": u}, u, vt, x)


def test_factor_shapes_are_checked_in_one_line() -> None:
    spec, u, vt, others, x = _dyadic_case(0)
    with pytest.raises(SpecError, match=r"factors must be \(V, 40, r\) and \(V, r, 24\)"):
        TorchLIF(spec).evaluate_low_rank(others, u[:, :, :2], vt, x)
    with pytest.raises(SpecError, match="the factors hold 3 sets, the parameters 7"):
        TorchLIF(spec).evaluate_low_rank(others, u[:3], vt[:3], x)
