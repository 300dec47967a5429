"""Softmax-OT and Sinkhorn weights, with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from polystep_neuro.optim import normalise_costs, sinkhorn_weights, softmax_weights, solve_weights
from polystep_neuro.optim.schedules import Constant, Cosine, as_schedule
from polystep_neuro.optim.solvers import shape_costs

# sigma(2) = 1 / (1 + e^-2): the softmax weight of the cheaper of two vertices whose
# normalised costs are 0 and 2 at epsilon = 1.
SIG2 = 1.0 / (1.0 + math.exp(-2.0))  # 0.8807970779778823


def test_normalise_costs_by_hand() -> None:
    # rows shifted to their minimum: [[0, 2], [2, 0]]; mean of that matrix = 1.
    c = torch.tensor([[1.0, 3.0], [4.0, 2.0]], dtype=torch.float64)
    assert normalise_costs(c).tolist() == [[0.0, 2.0], [2.0, 0.0]]
    # Flat matrix: scale guarded, all zeros (no preference, no division by zero).
    assert normalise_costs(torch.full((2, 3), 7.0)).abs().sum() == 0


def test_softmax_one_block_by_hand() -> None:
    # C = [[0, 1]]: shifted [0, 1], mean 0.5 -> [0, 2]; softmax(-[0, 2] / 1) = [s, 1 - s].
    w = softmax_weights(torch.tensor([[0.0, 1.0]], dtype=torch.float64), epsilon=1.0)
    torch.testing.assert_close(w, torch.tensor([[SIG2, 1 - SIG2]], dtype=torch.float64))
    # epsilon = 0.5 doubles the contrast: softmax(-[0, 4]) = [1/(1+e^-4), ...].
    w = softmax_weights(torch.tensor([[0.0, 1.0]], dtype=torch.float64), epsilon=0.5)
    assert w[0, 0].item() == pytest.approx(1 / (1 + math.exp(-4.0)), abs=1e-12)


def test_softmax_and_sinkhorn_two_by_two_by_hand() -> None:
    # C = [[1, 3], [4, 2]] -> normalised [[0, 2], [2, 0]] (see above).
    # Softmax rows at epsilon = 1: [s, 1 - s] and [1 - s, s] with s = sigma(2).
    # Sinkhorn with marginals (1/2, 1/2) x (1/2, 1/2): the plan W / 2 already has column sums
    # (s + 1 - s) / 2 = 1/2, so it is the fixed point and row-normalising gives W again.
    c = torch.tensor([[1.0, 3.0], [4.0, 2.0]], dtype=torch.float64)
    expected = torch.tensor([[SIG2, 1 - SIG2], [1 - SIG2, SIG2]], dtype=torch.float64)
    torch.testing.assert_close(softmax_weights(c, 1.0), expected)
    torch.testing.assert_close(sinkhorn_weights(c, 1.0, tol=1e-12), expected)


def test_sinkhorn_one_block_is_uniform() -> None:
    # One block: the vertex marginal forces equal mass on every vertex -> no move.
    # (Softmax gives [s, 1 - s] for the same matrix.)
    w = sinkhorn_weights(torch.tensor([[0.0, 1.0]], dtype=torch.float64), 1.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5]], dtype=torch.float64))


def test_solvers_agree_on_balanced_few_blocks() -> None:
    # Three blocks whose rows are permutations of one another: every vertex column holds the
    # same multiset of costs, so the softmax plan already has uniform column sums and
    # Sinkhorn must return it unchanged.
    row = torch.tensor([0.3, 1.0, 2.5, 0.0], dtype=torch.float64)
    c = torch.stack([row, row[[1, 2, 3, 0]], row[[2, 3, 0, 1]], row[[3, 0, 1, 2]]])
    sm = softmax_weights(c, 0.3)
    sk = sinkhorn_weights(c, 0.3, tol=1e-12, max_iter=500)
    torch.testing.assert_close(sk, sm, atol=1e-9, rtol=0)
    assert sm.max() > 0.6  # a genuinely non-uniform case


def test_solvers_agree_for_many_blocks() -> None:
    # Exchangeable costs (as with independently rotated polytopes): the softmax column sums
    # concentrate around uniform as the number of blocks grows, so the vertex marginal
    # becomes a weak constraint.  Measured mean per-row max |difference| at epsilon = 1:
    # about 0.27 for 1 block, 0.14 for 5, 0.04 for 50, 0.004 for 5000.
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(5000, 4, generator=gen, dtype=torch.float64)
    diff = (softmax_weights(c, 1.0) - sinkhorn_weights(c, 1.0, tol=1e-10, max_iter=1000)).abs()
    assert diff.max(1).values.mean() < 0.01
    few = torch.rand(2, 4, generator=gen, dtype=torch.float64)
    diff_few = (softmax_weights(few, 1.0) - sinkhorn_weights(few, 1.0)).abs()
    assert diff_few.max() > 0.05  # few blocks: the marginal does change the weights


def test_sinkhorn_marginals_and_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    c = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    w = sinkhorn_weights(c, 0.5, tol=1e-12, max_iter=2000)
    torch.testing.assert_close(w.sum(1), torch.ones(6, dtype=torch.float64))
    # Row-normalised plan times 1/P gives the plan: its columns carry 1/V each.
    torch.testing.assert_close(w.sum(0) / 6, torch.full((4,), 0.25, dtype=torch.float64))


def test_sinkhorn_iteration_cap_still_row_normalised() -> None:
    c = torch.rand(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = sinkhorn_weights(c, 0.05, tol=1e-15, max_iter=1)
    torch.testing.assert_close(w.sum(1), torch.ones(5, dtype=torch.float64))


def test_cheapest_vertex_gets_most_weight() -> None:
    c = torch.tensor([[3.0, 1.0, 2.0, 5.0], [0.0, 4.0, 4.0, 4.0]])
    for solver in ("softmax", "sinkhorn"):
        w = solve_weights(c, 0.2, solver)
        assert w.argmax(1).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: softmax_weights(torch.zeros(2, 2), 0.0), "epsilon must be positive"),
        (lambda: sinkhorn_weights(torch.zeros(2, 2), -1.0), "epsilon must be positive"),
        (lambda: sinkhorn_weights(torch.zeros(2, 2), 1.0, tol=0), "tol must be positive"),
        (lambda: sinkhorn_weights(torch.zeros(2, 2), 1.0, max_iter=0), "max_iter"),
        (lambda: solve_weights(torch.zeros(2, 2), 1.0, "greedy"), "solver must be one of"),
        (lambda: normalise_costs(torch.zeros(4)), "matrix"),
    ],
)
def test_solver_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_schedules() -> None:
    cos = Cosine(1.0, 0.1, 10)
    assert cos(0) == pytest.approx(1.0)
    assert cos(5) == pytest.approx(0.55)
    assert cos(10) == pytest.approx(0.1)
    assert cos(50) == pytest.approx(0.1)
    assert Constant(0.3)(123) == 0.3
    assert as_schedule(0.2, "x")(7) == 0.2
    with pytest.raises(ValueError, match="step_radius must be positive"):
        as_schedule(0.0, "step_radius")
    with pytest.raises(ValueError, match="epsilon schedule must stay positive"):
        as_schedule(Cosine(1.0, 0.0, 10), "epsilon")
    with pytest.raises(ValueError, match="total_steps"):
        Cosine(1.0, 0.1, 0)
    with pytest.raises(ValueError, match="probe_radius must be a positive number or a schedule"):
        as_schedule("big", "probe_radius")


def test_rank_shaping_sees_only_the_order_of_the_costs() -> None:
    c = torch.tensor([[1.0, 3.0, 2.0], [4.0, 0.5, 9.0]], dtype=torch.float64)
    ranked = shape_costs(c, "rank")
    torch.testing.assert_close(shape_costs(torch.exp(3 * c), "rank"), ranked)
    assert not torch.allclose(shape_costs(torch.exp(3 * c), "shift"), shape_costs(c, "shift"))
    # the best of each row is its zero, as with shift
    assert ranked[0].argmin() == 0 and ranked[1].argmin() == 1


def test_tensor_shaping_scales_each_group_by_its_own_costs() -> None:
    c = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    loud = c.clone()
    loud[:2] *= 100  # the first tensor's costs differ a hundred times more
    shaped, loud_shaped = shape_costs(c, "tensor", groups), shape_costs(loud, "tensor", groups)
    torch.testing.assert_close(shaped, loud_shaped)  # neither group sets the other's scale
    assert shaped.tolist() == [[0.0, 4 / 3], [0.0, 8 / 3], [0.0, 2.0]]  # as normalise_costs
    # shift: the loud group's scale flattens the quiet group's preference
    assert shape_costs(loud, "shift")[2, 1] < 0.05 < shape_costs(c, "shift")[2, 1]
    with pytest.raises(ValueError, match="needs the group of every block"):
        shape_costs(c, "tensor")
