"""The fast paths of the simulator: blocks of sets, float32 fixed-point state, in-place
quantisation and fingerprint grouping give the results of the plain computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point as fp
from simulators import lif_dynamics, param_groups
from simulators.lif_precision import int8_gemm_exact, quantized_halves
from simulators.torch_lif import (
    CPU_BLOCK_ELEMENTS,
    CPU_TIME_BLOCK,
    TorchLIF,
    _Workspace,
    quantized_weight,
)
from tests._param_sets import varied_sets
from tests.lava_reference import run_sample


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny blocks make many tiny GEMMs: with several threads each one may wait for a
    descheduled thread on a loaded machine (seconds per test), without changing a bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_blocking_defaults_follow_device_and_threads() -> None:
    spec = NetworkSpec.random([4, 3], 5, seed=0)
    assert TorchLIF(spec).blocking() == (CPU_BLOCK_ELEMENTS, CPU_TIME_BLOCK)
    assert TorchLIF(spec, block_elements=7).blocking() == (7, CPU_TIME_BLOCK)
    torch.set_num_threads(2)
    assert TorchLIF(spec).blocking() == (None, None)  # big ops: they parallelise
    assert TorchLIF(spec, time_block=3).blocking() == (CPU_BLOCK_ELEMENTS, 3)


def _random_case(seed: int, precision: str):
    """A random 1-3 layer network, V sets that share some prefixes, and input spikes."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(2, 48)) for _ in range(int(rng.integers(2, 5)))]
    delay = int(rng.integers(0, 2))
    steps = int(rng.integers(3, 12)) + delay * len(sizes)
    options: dict = {"du": float(rng.choice([1.0, 0.5, 0.1])), "dv": float(rng.choice([0.0, 0.2]))}
    if precision == "float32":
        options["reset"] = str(rng.choice(["zero", "subtract", "none"]))
        options["reset_delay"] = bool(rng.integers(0, 2))
        options["bias"] = bool(rng.integers(0, 2))
    names = [n for n in NetworkSpec.random(sizes, steps, delay=0).param_shapes()]
    if precision == "loihi-fixed":
        names = [n for n in names if not n.endswith((".du", ".bias"))]
    writable = tuple(rng.choice(names, size=min(3, len(names)), replace=False).tolist())
    spec = NetworkSpec.random(
        sizes, steps, seed=seed, weight_gain=3.0, delay=delay, writable=writable, **options
    )
    params = varied_sets(spec, writable, rng)
    x = (rng.random((3, steps, sizes[0])) < 0.5).astype(np.float32)
    return spec, params, x


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
@pytest.mark.parametrize("seed", range(12))
def test_results_do_not_depend_on_blocks_and_chunks(precision: str, seed: int) -> None:
    spec, params, x = _random_case(seed, precision)
    whole = TorchLIF(spec, precision, block_elements=1 << 30, time_block=100)
    ref = whole.evaluate(params, x, record=True)
    assert ref.spikes is not None and ref.voltages is not None and ref.currents is not None
    assert torch.equal(whole.counts(params, x), ref.counts)
    for block, steps in ((1, 1), (37, 2), (1 << 30, 3), (1, 100)):
        sim = TorchLIF(spec, precision, block_elements=block, time_block=steps)
        part = sim.evaluate(params, x, record=True)
        assert part.spikes is not None and part.voltages is not None and part.currents is not None
        assert torch.equal(part.counts, ref.counts)
        assert torch.equal(sim.counts(params, x), ref.counts)
        for ours, theirs in zip(
            part.spikes + part.voltages + part.currents,
            ref.spikes + ref.voltages + ref.currents,
            strict=True,
        ):
            if precision == "loihi-fixed":
                assert torch.equal(ours, theirs)  # integers: exact whatever the GEMM's shape
            else:  # a GEMM's rounding may depend on its row count; spikes did not move
                assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def _one_neuron(n_in: int, sign: float, dv: float, steps: int) -> NetworkSpec:
    """One neuron fed by ``n_in`` inputs of device weight 254 * sign (scale set by hand,
    weight_exp 0), no current memory: with every input spiking, u = 254 * n_in * 64 on every
    step after the first and v climbs towards the 24-bit limit as fast as the bounds allow."""
    layer = LayerSpec(
        weight=np.full((1, n_in), sign, dtype=np.float32),
        du=1.0,
        dv=dv,
        vth=1e9,  # quantises to the largest threshold, 2**23 - 64 after the shift
        fixed_scale=254.0,
        fixed_weight_exp=0,
    )
    return NetworkSpec([layer], steps)


@pytest.mark.parametrize(
    ("n_in", "sign", "dv", "state"),
    [
        (73, 1.0, 0.0, torch.float32),  # v peaks at 73 * 254 * 64 * 7 = 8,306,816 < 2**23 - 1
        (74, 1.0, 0.0, torch.float64),  # 8,421,056 would pass it: clip, spike, float64
        (73, -1.0, 0.1, torch.float32),  # negative v, decay truncated toward zero
        (154, 1.0, 0.3, torch.float32),  # 3.3 steps of decayed input: bound 8,343,413
    ],
)
def test_fixed_state_precision_follows_the_bounds_and_stays_exact(
    n_in: int, sign: float, dv: float, state: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 8  # 7 with input: Lava's Dense delivers one step late
    spec = _one_neuron(n_in, sign, dv, steps)
    x = np.ones((1, steps, n_in), dtype=np.float32)
    used: list[torch.dtype] = []
    original = lif_dynamics.FixedLIF._use

    def spy(self, dtype: torch.dtype) -> None:
        used.append(dtype)
        original(self, dtype)

    monkeypatch.setattr(lif_dynamics.FixedLIF, "_use", spy)
    res = TorchLIF(spec, "loihi-fixed", time_block=2).evaluate(None, x, record=True)
    # float32 from the start; float64 from the chunk whose bound passes 2**23 on
    assert used == ([torch.float32] if state == torch.float32 else [torch.float32, state])
    assert res.spikes is not None and res.voltages is not None and res.currents is not None
    ref_s, ref_v, ref_u = run_sample(fp.quantize_spec(spec), x[0])
    assert np.array_equal(res.voltages[0][0, 0].numpy(), ref_v[0])
    assert np.array_equal(res.currents[0][0, 0].numpy(), ref_u[0])
    assert np.array_equal(res.spikes[0][0, 0].numpy(), ref_s[0])
    assert np.abs(ref_v[0]).max() > 2**22  # the values really come near the bound


@pytest.mark.parametrize("n_in", [66051, 66052])
def test_fixed_gemm_at_the_float32_exactness_bound(n_in: int) -> None:
    # 66051 * 254 < 2**24 <= 66052 * 254: the last width whose sums float32 holds exactly,
    # and the first that needs the float64 GEMM.  Every input spikes: the largest sums.
    rng = np.random.default_rng(n_in)
    layer = LayerSpec(
        weight=np.stack([np.ones(n_in), -np.ones(n_in), rng.choice([-1.0, 1.0], n_in)]),
        du=1.0,
        dv=0.0,
        vth=1e9,
        fixed_scale=254.0,
        fixed_weight_exp=0,
    )
    spec = NetworkSpec([layer], 3)
    x = np.ones((1, 3, n_in), dtype=np.float32)
    x[0, 1, ::3] = 0
    res = TorchLIF(spec, "loihi-fixed").evaluate(None, x, record=True)
    assert res.currents is not None and res.voltages is not None
    ref_s, ref_v, ref_u = run_sample(fp.quantize_spec(spec), x[0])
    assert np.array_equal(res.currents[0][0, 0].numpy(), ref_u[0])
    assert np.array_equal(res.voltages[0][0, 0].numpy(), ref_v[0])


def test_in_place_weight_quantisation_equals_the_shared_quantiser() -> None:
    layer = LayerSpec(weight=[[0.3, -0.2]], fixed_scale=128.0, fixed_weight_exp=1)  # factor 64
    rng = np.random.default_rng(0)
    ties = (np.arange(-130, 131) + 0.5) / 32.0  # w * 64 / 2 is exactly k + 0.5: half to even
    values = np.concatenate([ties, rng.normal(0, 3.0, 2003), [0.0, -0.0, 1e6, -1e6]])
    w = torch.as_tensor(values, dtype=torch.float32).reshape(2, -1, 2)
    expected = fp.quantize_weight(w.numpy(), layer)
    work = _Workspace(torch.device("cpu"))
    for dtype in (torch.float32, torch.float64):
        got = quantized_weight(w, layer, dtype, work, "t")
        assert got.dtype == dtype
        assert np.array_equal(got.double().numpy(), expected)
    assert np.abs(expected).max() == 254 and len(np.unique(expected)) > 200
    assert fp.quantize_weight(np.array([0.5 / 32, 1.5 / 32]), layer).tolist() == [0.0, 4.0]


def _exact_groups(group: torch.Tensor, values: list[torch.Tensor]) -> list[list[int]]:
    keys: dict[tuple, list[int]] = {}
    for s in range(group.numel()):
        key = (
            int(group[s]),
            *(v[s].contiguous().view(torch.int32).flatten().tolist() for v in values),
        )
        keys.setdefault(tuple(map(str, key)), []).append(s)
    return sorted(keys.values())


@pytest.mark.parametrize("collide", [False, True])
def test_grouping_is_exact_even_when_fingerprints_collide(
    collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if collide:  # every fingerprint equal: the full comparison must take over
        monkeypatch.setattr(
            param_groups, "_fingerprint", lambda bits: torch.zeros(bits.shape[0], dtype=torch.int64)
        )
    rng = np.random.default_rng(1)
    pool = torch.as_tensor(rng.normal(size=(4, 3, 5)), dtype=torch.float32)
    pool[3] = 0.0
    w = pool[torch.as_tensor(rng.integers(0, 4, size=40))].clone()
    w[5] = -0.0  # bit-different from 0.0: a different set of parameters
    vth = torch.as_tensor(rng.choice([0.5, 1.0], size=40), dtype=torch.float32)
    group = torch.as_tensor(rng.integers(0, 2, size=40))
    rep, inverse = param_groups.distinct_sets(group, [w, vth])
    found = sorted([torch.nonzero(inverse == g)[:, 0].tolist() for g in range(rep.numel())])
    assert found == _exact_groups(group, [w, vth])
    assert rep.tolist() == sorted(rep.tolist())  # numbered by first appearance
    assert torch.equal(inverse[rep], torch.arange(rep.numel()))


@pytest.mark.parametrize("duplicate", [False, True])
def test_sets_that_differ_off_the_sampled_columns_are_grouped_exactly(duplicate: bool) -> None:
    # 30 sets of 200 values that differ only in column 1, which the all-distinct shortcut's
    # sample (every 12th column) never reads: the shortcut must not decide, and with two
    # equal sets the full comparison must merge them
    w = torch.zeros(30, 200)
    w[:, 1] = torch.arange(30, dtype=torch.float32)
    if duplicate:
        w[7, 1] = w[3, 1]
    group = torch.zeros(30, dtype=torch.long)
    rep, inverse = param_groups.distinct_sets(group, [w])
    found = sorted([torch.nonzero(inverse == g)[:, 0].tolist() for g in range(rep.numel())])
    assert found == _exact_groups(group, [w])
    assert rep.numel() == (29 if duplicate else 30)


def test_sets_distinct_on_the_sample_are_each_their_own_group() -> None:
    w = torch.randn(50, 4, 100)
    group = torch.as_tensor(np.random.default_rng(0).integers(0, 3, size=50))
    rep, inverse = param_groups.distinct_sets(group, [w])
    assert torch.equal(rep, torch.arange(50)) and torch.equal(inverse, torch.arange(50))


needs_int8 = pytest.mark.skipif(
    not int8_gemm_exact("cpu"), reason="torch._int_mm is not exact on this CPU"
)


@needs_int8
@pytest.mark.parametrize("seed", range(12))
def test_int8_gemm_gives_the_float_gemm_path_bit_for_bit(seed: int) -> None:
    """The int8 x int8 -> int32 GEMMs against the float reference path, every trace, in
    whole blocks (batched and stacked GEMMs) and one-set blocks (plain GEMMs)."""
    spec, params, x = _random_case(seed, "loihi-fixed")
    for block, steps in ((1 << 30, 100), (1, 2), (37, 3)):
        runs = [
            TorchLIF(spec, "loihi-fixed", block_elements=block, time_block=steps, int8_gemm=int8)
            for int8 in (False, True)
        ]
        assert not runs[0].int8_gemm and runs[1].int8_gemm
        ref, got = (sim.evaluate(params, x, record=True) for sim in runs)
        assert got.spikes is not None and ref.spikes is not None
        assert got.voltages is not None and ref.voltages is not None
        assert got.currents is not None and ref.currents is not None
        assert torch.equal(got.counts, ref.counts)
        for ours, theirs in zip(
            got.spikes + got.voltages + got.currents,
            ref.spikes + ref.voltages + ref.currents,
            strict=True,
        ):
            assert torch.equal(ours, theirs)


@needs_int8
@pytest.mark.parametrize(
    "writable",
    [("fc0.weight", "fc1.weight"), ("fc1.weight",), ("fc0.weight",), ("lif1.v_bias",)],
)
def test_int8_gemm_on_wide_and_narrow_layers(writable: tuple[str, ...]) -> None:
    """Layers wider than the narrow-layer flip, shared first layers (one GEMM against the
    stacked weights, or one per set on a broadcast input), several threads' whole blocks."""
    spec = NetworkSpec.random([40, 96, 10], 9, seed=3, weight_gain=2.0, writable=writable)
    gen = torch.Generator().manual_seed(0)
    params = {
        name: torch.as_tensor(spec.parameters()[name])[None]
        + 0.2 * torch.randn(5, *np.shape(spec.parameters()[name]), generator=gen)
        for name in writable
    }
    x = (torch.rand(4, 9, 40, generator=gen) < 0.4).float()
    for block in (None, 1 << 30, 96 * 4):
        ref = TorchLIF(spec, "loihi-fixed", block_elements=block, int8_gemm=False)
        got = TorchLIF(spec, "loihi-fixed", block_elements=block, int8_gemm=True)
        a, b = ref.evaluate(params, x, record=True), got.evaluate(params, x, record=True)
        assert a.voltages is not None and b.voltages is not None
        assert torch.equal(a.counts, b.counts) and int(a.counts.sum()) > 0
        for ours, theirs in zip(b.voltages, a.voltages, strict=True):
            assert torch.equal(ours, theirs)


def test_int8_gemm_is_chosen_per_precision_and_device() -> None:
    spec = NetworkSpec.random([4, 3], 5, seed=0)
    assert not TorchLIF(spec, "float32").int8_gemm  # float sums stay in float32
    assert TorchLIF(spec, "loihi-fixed").int8_gemm == int8_gemm_exact("cpu")
    assert not TorchLIF(spec, "loihi-fixed", int8_gemm=False).int8_gemm
    assert not int8_gemm_exact("cuda")  # CUDA keeps its float GEMMs (no int8 shape rules)
    with pytest.raises(SpecError, match="no exact int8 GEMM"):
        TorchLIF(spec, "float32", int8_gemm=True)


def test_int8_weights_are_half_the_shared_quantiser() -> None:
    layer = LayerSpec(weight=[[0.3, -0.2]], fixed_scale=128.0, fixed_weight_exp=1)
    rng = np.random.default_rng(1)
    ties = (np.arange(-130, 131) + 0.5) / 32.0
    values = np.concatenate([ties, rng.normal(0, 3.0, 2003), [0.0, -0.0, 1e6, -1e6]])
    w = torch.as_tensor(values, dtype=torch.float32).reshape(2, -1, 2)
    got = quantized_halves(w, layer, _Workspace(torch.device("cpu")), "t")
    assert got.dtype == torch.int8
    assert np.array_equal(got.double().numpy() * 2.0, fp.quantize_weight(w.numpy(), layer))
