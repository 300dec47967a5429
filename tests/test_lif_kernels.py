"""The fused CPU neuron updates give the reference torch passes' results bit for bit, on
every neuron kind, reset rule, delay, bias and recording, in float32 and loihi-fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polystep_neuro.core.network import NetworkSpec
from simulators import lif_kernels
from simulators.torch_lif import TorchLIF
from tests._param_sets import varied_sets

pytestmark = pytest.mark.skipif(not lif_kernels.active(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _case(seed: int, precision: str):
    """A random 1-3 layer network of either neuron kind, 6 sets (some repeated), spikes."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(2, 40)) for _ in range(int(rng.integers(2, 5)))]
    delay = int(rng.integers(0, 2))
    steps = int(rng.integers(3, 12)) + delay * len(sizes)
    neuron = str(rng.choice(["leaky", "synaptic"]))
    du = 1.0 if neuron == "leaky" else float(rng.choice([1.0, 0.5, 0.1]))
    options: dict = {"du": du, "dv": float(rng.choice([0.0, 0.2, 0.1]))}
    if precision == "float32":
        options["reset"] = str(rng.choice(["zero", "subtract", "none"]))
        options["reset_delay"] = bool(rng.integers(0, 2))
        options["bias"] = bool(rng.integers(0, 2))
    names = list(NetworkSpec.random(sizes, steps, delay=0).param_shapes())
    if precision == "loihi-fixed":
        names = [n for n in names if not n.endswith((".du", ".bias"))]
    if neuron == "leaky":
        names = [n for n in names if not n.endswith(".du")]
    writable = tuple(rng.choice(names, size=min(4, len(names)), replace=False).tolist())
    spec = NetworkSpec.random(
        sizes, steps, seed=seed, weight_gain=3.0, delay=delay, writable=writable, **options
    )
    for layer in spec.layers:
        layer.neuron = neuron
        if rng.random() < 0.5:
            layer.v_bias = rng.normal(0, 0.2, size=layer.n_out).astype(np.float32)
    params = varied_sets(spec, writable, rng, vth_floor=0.05)
    x = (rng.random((3, steps, sizes[0])) < 0.5).astype(np.float32)
    return spec, params, x


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the kernels' calls (so a test cannot pass by never taking the fused path), and
    take it on every block, however narrow (where it would not pay, it must still agree)."""
    monkeypatch.setattr(lif_kernels, "pays", lambda *block, **how: True)
    seen: list[str] = []
    for name in ("float_kernel", "fixed_kernel"):
        factory = getattr(lif_kernels, name)

        def spy(*flags, _factory=factory, _name=name):
            seen.append(_name)
            return _factory(*flags)

        monkeypatch.setattr(lif_kernels, name, spy)
    return seen


def _shares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many shares each fused call was split into, checking they cover its sets."""
    split = lif_kernels.over_sets
    seen: list[int] = []

    def spy(call, sets):  # type: ignore[no-untyped-def]
        ranges: list[tuple[int, int]] = []

        def record(first: int, last: int) -> None:
            ranges.append((first, last))
            call(first, last)

        split(record, sets)
        ranges.sort()
        assert ranges[0][0] == 0 and ranges[-1][1] == sets
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        seen.append(len(ranges))

    monkeypatch.setattr(lif_kernels, "over_sets", spy)
    return seen


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
@pytest.mark.parametrize("seed", range(16))
def test_fused_updates_equal_the_reference(
    precision: str, seed: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two threads each block's sets are shared between two of them (over_sets)."""
    torch.set_num_threads(threads)
    spec, params, x = _case(seed, precision)
    calls = _calls(monkeypatch)
    shares = _shares(monkeypatch)
    for block, steps in ((1, 2), (1 << 30, 100)):
        sim = TorchLIF(spec, precision, block_elements=block, time_block=steps)
        before = len(calls)
        with lif_kernels.reference_updates():
            ref = sim.evaluate(params, x, record=True)
            ref_counts = sim.counts(params, x)
        assert len(calls) == before
        fused = sim.evaluate(params, x, record=True)
        assert torch.equal(sim.counts(params, x), ref_counts)
        assert torch.equal(fused.counts, ref.counts)
        assert ref.spikes and ref.voltages and ref.currents
        assert fused.spikes and fused.voltages and fused.currents
        for ours, theirs in zip(
            fused.spikes + fused.voltages + fused.currents,
            ref.spikes + ref.voltages + ref.currents,
            strict=True,
        ):
            assert torch.equal(ours, theirs)
    kind = "float_kernel" if precision == "float32" else "fixed_kernel"
    assert kind in calls
    assert max(shares) <= threads


def test_fused_updates_follow_snntorch_defaults_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """snnTorch's default Leaky (subtract reset, reset_delay) over many steps, where float
    rounding differences would show in the voltages at once."""
    spec = NetworkSpec.random(
        [64, 96, 10], 40, seed=3, bias=True, reset="subtract", reset_delay=True, dv=0.1,
        writable="all",
    )  # fmt: skip
    for layer in spec.layers:
        layer.neuron = "leaky"
    x = (np.random.default_rng(0).random((16, 40, 64)) < 0.3).astype(np.float32)
    calls = _calls(monkeypatch)
    sim = TorchLIF(spec, "float32", block_elements=1 << 14, time_block=5)
    with lif_kernels.reference_updates():
        ref = sim.evaluate({}, x, record=True)
    fused = sim.evaluate({}, x, record=True)
    assert calls
    assert ref.voltages is not None and fused.voltages is not None
    assert int(ref.counts.sum()) > 100  # the network spikes
    for ours, theirs in zip(fused.voltages, ref.voltages, strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(fused.counts, ref.counts)


def test_reference_updates_switch_is_restored() -> None:
    assert lif_kernels.active()
    with lif_kernels.reference_updates():
        assert not lif_kernels.active()
        assert not lif_kernels.usable(torch.zeros(2, 3))
    assert lif_kernels.active()
    assert lif_kernels.usable(torch.zeros(2, 3), None)
    assert not lif_kernels.usable(torch.zeros(3, 2).T)  # neurons not at unit stride
    assert not lif_kernels.usable(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize(("threads", "block"), [(1, 40 * 4), (2, 1 << 20)])
@pytest.mark.parametrize("rank", [1, 2, 4, 5])
def test_low_rank_first_layer_summed_in_the_kernel(
    rank: int, threads: int, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to MAX_FUSED_RANK the float kernel sums the base product and the factors itself
    (no pass writes the sum); dyadic values keep every sum exact, so it must equal the
    reference bit for bit.  A larger rank takes the summed input.  With two threads, all
    sets in one block, shared between them."""
    torch.set_num_threads(threads)
    rng = np.random.default_rng(rank)
    spec = NetworkSpec.random([24, 40, 6], 9, seed=rank, dv=0.25, bias=True, writable="all")
    spec.layers[0].weight = rng.integers(-8, 9, size=(40, 24)).astype(np.float32) / 8
    sets = 5
    u = torch.as_tensor(rng.integers(-2, 3, size=(sets, 40, rank)) / 4, dtype=torch.float32)
    vt = torch.as_tensor(rng.integers(-1, 2, size=(sets, rank, 24)), dtype=torch.float32)
    x = torch.as_tensor(rng.random((4, 9, 24)) < 0.4, dtype=torch.float32)
    ranks: list[int] = []
    monkeypatch.setattr(lif_kernels, "pays", lambda *block, **how: True)
    factory = lif_kernels.float_kernel
    monkeypatch.setattr(
        lif_kernels, "float_kernel", lambda *flags: ranks.append(flags[-1]) or factory(*flags)
    )
    shares = _shares(monkeypatch)
    sim = TorchLIF(spec, "float32", block_elements=block, time_block=4)
    with lif_kernels.reference_updates():
        ref = sim.evaluate_low_rank({}, u, vt, x, record=True)
    got = sim.evaluate_low_rank({}, u, vt, x, record=True)
    assert (rank in ranks) == (rank <= lif_kernels.MAX_FUSED_RANK)
    assert max(shares, default=threads) == threads
    assert ref.voltages is not None and got.voltages is not None
    assert torch.equal(got.counts, ref.counts) and int(ref.counts.sum()) > 0
    for ours, theirs in zip(got.voltages, ref.voltages, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    ("sets", "n", "fused"),
    [(1, 512, True), (4, 128, True), (1, 64, True), (4, 64, False), (1, 10, False),
     (51, 10, False)],
)  # fmt: skip
def test_the_fused_update_runs_where_it_was_measured_to_pay(sets: int, n: int, fused: bool) -> None:
    block = torch.zeros(5, sets, 128, n)
    assert lif_kernels.pays(block) == fused
    assert lif_kernels.pays(block, shared=False) == fused  # one thread: no sharing
    torch.set_num_threads(2)  # a set for each thread, and only where sharing won
    assert lif_kernels.pays(block) == (fused and sets >= 2)
    assert not lif_kernels.pays(block, shared=False)


def test_narrow_rows_merge_where_samples_lie_back_to_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A set's B rows of a narrow layer go as one row (their parameters tiled B times) only
    where every tensor holds the samples back to back; a merged run equals the reference."""
    set_major = torch.zeros(2, 5, 16, 10).permute(1, 0, 2, 3)  # (steps, sets, B, n)
    sample_major = torch.zeros(5, 16, 2, 10).permute(0, 2, 1, 3)  # sets inside samples
    assert lif_kernels.merges(set_major, set_major)
    assert not lif_kernels.merges(set_major, sample_major)
    assert not lif_kernels.merges(torch.zeros(5, 2, 128, 512))  # too long to stay in cache
    merged: list[bool] = []
    original = lif_kernels.merges
    monkeypatch.setattr(lif_kernels, "merges", lambda *t: merged.append(original(*t)) or merged[-1])
    spec = NetworkSpec.random([20, 12, 6], 12, seed=5, dv=0.2, writable=("fc1.weight",))
    spec.layers[1].v_bias = np.linspace(-0.3, 0.3, 6).astype(np.float32)
    x = (np.random.default_rng(5).random((16, 12, 20)) < 0.4).astype(np.float32)
    params = {"fc1.weight": torch.as_tensor(spec.layers[1].weight)[None].repeat(3, 1, 1)}
    params["fc1.weight"][1:] += 0.3 * torch.randn(
        2, 6, 12, generator=torch.Generator().manual_seed(0)
    )
    for precision in ("float32", "loihi-fixed"):
        sim = TorchLIF(spec, precision, block_elements=1 << 12, time_block=3)
        with lif_kernels.reference_updates():
            ref = sim.evaluate(params, x)
        assert torch.equal(sim.evaluate(params, x).counts, ref.counts)
        assert int(ref.counts.sum()) > 0
    assert True in merged


def test_a_share_that_fails_fails_the_update() -> None:
    """over_sets waits for every share and raises what a helper thread raised."""
    torch.set_num_threads(2)
    done: list[tuple[int, int]] = []

    def call(first: int, last: int) -> None:
        if first > 0:
            raise RuntimeError(f"share {first}-{last} failed")
        done.append((first, last))

    with pytest.raises(RuntimeError, match="share 2-5 failed"):
        lif_kernels.over_sets(call, 5)
    assert done == [(0, 2)]


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_two_threads_share_the_sets_bit_for_bit(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layer's 5 sets in one block, split between two threads, give the reference's
    counts and (float32; loihi-fixed records its integers through the reference) voltages."""
    torch.set_num_threads(2)
    spec = NetworkSpec.random([48, 80, 10], 20, seed=5, weight_gain=1.0, dv=0.2, writable="all")
    rng = np.random.default_rng(1)
    base = torch.as_tensor(spec.parameters()["fc0.weight"])
    noise = torch.as_tensor(rng.normal(0, 0.3, size=(5, *base.shape))).float()
    params = {"fc0.weight": base[None] + noise}
    x = (rng.random((4, 20, 48)) < 0.4).astype(np.float32)
    _calls(monkeypatch)
    shares = _shares(monkeypatch)
    sim = TorchLIF(spec, precision, block_elements=1 << 30, time_block=100)
    record = precision == "float32"
    with lif_kernels.reference_updates():
        ref = sim.evaluate(params, x, record=record)
    fused = sim.evaluate(params, x, record=record)
    assert shares and min(shares) == 2
    assert int(ref.counts.sum()) > 100
    assert torch.equal(fused.counts, ref.counts)
    for ours, theirs in zip(fused.voltages or [], ref.voltages or [], strict=True):
        assert torch.equal(ours, theirs)
