"""Low-rank probes: first-layer directions drawn as outer products (``Subspace.outer``),
their factors (``probe_factors``), and the adaptation loop handing them to the float32
simulator instead of full weight sets (``Settings.low_rank_probes``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from devices.readout import with_readout
from devices.registry import open_backend
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.optim.base import StateMismatchError
from polystep_neuro.optim.subspace import search_subspace
from polystep_neuro.run.controller import Adapter
from polystep_neuro.run.data import SpikeDataset, load_digits_split, rate_encode
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.output_copies import with_output_copies

SIZES = [6 * 5, 6, 4 * 6, 4]  # a 5-6-4 network's weights and biases
MATRIX = (0, 6, 5)  # the first layer's weights: offset 0, 6 x 5


def _subspace(rule: str, rank: int = 4) -> Subspace:
    plain = search_subspace(SIZES, rank, rule, 2, 1)
    return Subspace(sizes=plain.sizes, rank=plain.rank, absorb_interval=1, outer=(MATRIX,))


@pytest.mark.parametrize("rule", ["joint", "equal"])
def test_probe_factors_rebuild_every_candidates_first_layer(rule: str) -> None:
    x0 = torch.randn(sum(SIZES), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    opt = PolyStep(x0, subspace=_subspace(rule), seed=3, momentum=0.5)
    for _ in range(3):  # across redraws (absorb every step) and moves
        candidates = opt.ask()
        base, u, vt = opt.probe_factors(0)
        assert u.shape == (len(candidates), 6, 2) and vt.shape == (len(candidates), 2, 5)
        rebuilt = (base + torch.bmm(u, vt)).reshape(len(candidates), -1)
        torch.testing.assert_close(rebuilt, candidates[:, :30], rtol=0, atol=1e-12)
        moved = (candidates[:, :30] != base.reshape(1, -1)).any(dim=1)
        assert 0 < int(moved.sum())  # not vacuous: some candidates move the matrix
        if rule == "equal":  # blocks of the other tensors leave it alone (zero factors)
            assert int(moved.sum()) < len(candidates)
        opt.tell(torch.randn(len(candidates), dtype=torch.float64))


def test_outer_directions_are_rank_one_with_the_gaussian_variance() -> None:
    space = Subspace(sizes=[40 * 50 + 10], rank=64, absorb_interval=1, outer=((0, 40, 50),))
    plain = Subspace(sizes=[40 * 50 + 10], rank=64, absorb_interval=1)
    opt = PolyStep(torch.zeros(2010), subspace=space, seed=1)
    basis = opt._map.basis(0)  # n x rank
    for j in range(3):
        assert int(torch.linalg.matrix_rank(basis[:2000, j].view(40, 50))) == 1
    gaussian = PolyStep(torch.zeros(2010), subspace=plain, seed=1)._map.basis(0)
    # a unit move in z moves each parameter by 1 / sqrt(rank) (RMS) either way
    assert abs(float(basis[:2000].std()) * 8 - 1) < 0.1
    assert abs(float(gaussian[:2000].std()) * 8 - 1) < 0.1


@pytest.mark.parametrize(
    ("outer", "sizes", "rank"),
    [
        (((25, 2, 3),), [30, 6], 4),  # runs past its tensor
        (((0, 2, 3), (4, 2, 3)), [30, 6], 4),  # overlaps another
        (((30, 2, 3),), [30, 6], 8),  # inside a tensor kept in full (6 <= rank 8)
        (((0, 0, 3),), [30, 6], 4),  # empty
    ],
)
def test_outer_matrices_that_do_not_fit_are_refused(outer, sizes, rank) -> None:
    with pytest.raises(ValueError, match="must lie inside one tensor searched in a subspace"):
        Subspace(sizes=sizes, rank=rank, outer=outer)


def test_a_state_saved_without_outer_directions_is_refused_by_name() -> None:
    plain = Subspace(sizes=SIZES, rank=4, absorb_interval=1)
    state = PolyStep(torch.zeros(64), subspace=plain).state_dict()
    with pytest.raises(StateMismatchError) as err:
        PolyStep(torch.zeros(64), subspace=_subspace("equal")).load_state_dict(state)
    assert tuple(err.value.keys) == ("outer",)


def test_outer_directions_resume_bit_identically() -> None:
    def sphere(x: torch.Tensor) -> torch.Tensor:
        return (x * x).sum(-1)

    x0 = torch.linspace(-1, 1, 64, dtype=torch.float64)
    whole = PolyStep(x0, subspace=_subspace("joint"), seed=2, momentum=0.5)
    for _ in range(12):
        whole.step(sphere)
    assert float(sphere(whole.x)) < 0.7 * float(sphere(x0))  # it optimises
    first = PolyStep(x0, subspace=_subspace("joint"), seed=2, momentum=0.5)
    for _ in range(5):
        first.step(sphere)
    pending = first.ask()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = PolyStep(torch.zeros(64, dtype=torch.float64), subspace=_subspace("joint"), seed=2,
                       momentum=0.5)  # fmt: skip
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(resumed.probe_factors(0)[1], first.probe_factors(0)[1])
    resumed.tell(sphere(pending))
    for _ in range(6):
        resumed.step(sphere)
    assert torch.equal(resumed.x, whole.x)


T = 10


@pytest.fixture(scope="module")
def train() -> SpikeDataset:
    split = load_digits_split(0)
    return SpikeDataset(rate_encode(split.x_train[:256], T), split.y_train[:256], 64, seed=0)


def _adapter(
    train: SpikeDataset, backend_name: str, low_rank: bool, copies: bool = False
) -> Adapter:
    spec = NetworkSpec.random([64, 24, 10], T, seed=1, writable="all")
    backend = open_backend(backend_name, device="cpu")
    if copies:  # every class read from two output neurons, summed by the host's readout
        spec, backend = with_output_copies(spec), with_readout(backend)
    backend.load(spec)
    settings = Settings(low_rank_probes=low_rank, rank=8, seed=4)
    return Adapter.build(backend, train, steps=6, settings=settings, anchor_weight=0.5,
                         eval_every=0, progress=False)  # fmt: skip


@pytest.mark.parametrize("copies", [False, True])
def test_the_float_simulator_takes_factors_and_gives_the_full_sets_losses(train, copies) -> None:
    """Also through the readout of output copies (its factored counts were per copy, so a
    network from ``deploy``'s tie splitting failed deep in the loss)."""
    adapter = _adapter(train, "torch-sim", low_rank=True, copies=copies)
    assert adapter.low_rank_probes
    inputs, targets = adapter.train.batch(0)
    candidates = adapter.optimizer.ask()
    factored, asked = adapter._losses(candidates, inputs, targets)
    plan, adapter._low_rank = adapter._low_rank, None  # the same candidates, as full sets
    full, asked_full = adapter._losses(candidates, inputs, targets)
    adapter._low_rank = plan
    assert asked == asked_full == len(candidates) + 1  # the start rides along either way
    assert float(full.std()) > 0  # the candidates differ
    # float32 sums the first layer in another order (x W^T + (x Vt^T) U^T against one GEMM
    # of W + U Vt), so a membrane within rounding of its threshold may spike on one side
    # only: one candidate in 76 here, 1e-3 of its loss.  Wrong factors move them all.
    gap = (factored - full).abs()
    assert float((gap <= 1e-5).float().mean()) >= 0.95, gap
    assert float(gap.max()) < 0.01, gap


def test_other_backends_take_full_sets_of_the_same_directions(train) -> None:
    fixed = _adapter(train, "torch-sim-fixed", low_rank=True)
    assert not fixed.low_rank_probes
    assert fixed.optimizer.subspace is not None and fixed.optimizer.subspace.outer
    assert not _adapter(train, "torch-sim", low_rank=False).low_rank_probes
    result = fixed.run(3)  # the loop runs on full sets
    assert result.steps == 3


def test_low_rank_probes_descend_like_full_sets(train) -> None:
    """Six steps of the same recipe with and without the factors: float rounding differs,
    so the trajectories may part, but both must lower the loss from the start."""
    ends = {}
    for low_rank in (False, True):
        adapter = _adapter(train, "torch-sim", low_rank=low_rank)
        result = adapter.run(6)
        losses = [r["loss_min"] for r in result.history if "loss_min" in r]
        ends[low_rank] = losses
        assert min(losses[-3:]) < losses[0]
    assert len(ends[True]) == len(ends[False]) == 6


def test_a_base_is_refused_in_fixed_point_and_checked_in_float() -> None:
    spec = NetworkSpec.random([5, 6, 4], 4, seed=0, writable="all")
    x = np.zeros((2, 4, 5), dtype=np.float32)
    u, vt = torch.zeros(3, 6, 1), torch.zeros(3, 1, 5)
    backend = open_backend("torch-sim-fixed", device="cpu")
    backend.load(spec)
    with pytest.raises(SpecError, match="need the float32 simulator"):
        backend.evaluate_low_rank({}, torch.zeros(6, 5), u, vt, x)
    backend = open_backend("torch-sim", device="cpu")
    backend.load(spec)
    with pytest.raises(SpecError, match=r"the base must be \(6, 5\)"):
        backend.evaluate_low_rank({}, torch.zeros(5, 6), u, vt, x)
    with pytest.raises(SpecError, match="the base contains non-finite values"):
        backend.evaluate_low_rank({}, torch.full((6, 5), float("nan")), u, vt, x)


def test_the_api_says_what_low_rank_probes_do_on_its_backend(train, capsys) -> None:
    import polystep_neuro as pn

    spec = NetworkSpec.random([64, 24, 10], T, seed=1, writable="all")
    data = (train.spikes[:128], train.labels[:128])
    pn.adapt(spec, "torch-sim-fixed", train=data, steps=1, rank=4, low_rank_probes=True,
             writable="all", torch_device="cpu")  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "low-rank probes: torch-sim-fixed takes full weight sets (only the float32 torch "
        "simulator, torch-sim, takes factors)" in out
    )
