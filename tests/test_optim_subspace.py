"""Per-tensor random subspaces: lift/project, block deltas, absorb, regeneration."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polystep_neuro.optim import Subspace, SubspaceMap
from polystep_neuro.optim.subspace import allocate_ranks, search_subspace

SIZES = [40, 3, 25, 5]  # tensors 1 and 3 are smaller than the rank and kept in full
RANK = 6


def _map(block_dim: int = 2, seed: int = 0, sizes=SIZES, rank=RANK) -> SubspaceMap:
    theta0 = torch.randn(
        sum(sizes), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    return SubspaceMap(Subspace(sizes=sizes, rank=rank), theta0, block_dim, seed)


def test_dimensions_and_full_tensors() -> None:
    spec = Subspace(sizes=SIZES, rank=RANK)
    assert spec.full == (False, True, False, True)
    assert spec.dim == 6 + 3 + 6 + 5
    m = _map(block_dim=3)
    assert m.dim == 20 and m.num_blocks == 7  # 21 coordinates, one padding coordinate
    assert m.basis(1) is None and m.basis(3) is None
    assert m.basis(0).shape == (40, 6) and m.basis(2).shape == (25, 6)
    assert Subspace(sizes=[10, 10], rank=[2, 20]).dim == 12


def test_zero_step_lifts_to_theta0_exactly() -> None:
    m = _map()
    assert torch.equal(m.lift(m.initial_z()), m.theta0)


def test_full_tensors_round_trip_exactly() -> None:
    m = _map()
    theta = torch.randn(sum(SIZES), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    back = m.lift(m.project(theta))
    for idx, (s, e) in enumerate(m.param_ranges):
        if m.spec.full[idx]:
            assert torch.equal(back[s:e], theta[s:e])
    # A fully kept vector (rank >= every size) round-trips exactly everywhere.
    ident = SubspaceMap(Subspace(sizes=[4, 7], rank=8), theta[:11], 2, 0)
    assert torch.equal(ident.lift(ident.project(theta[:11])), theta[:11])


def test_step_in_z_moves_theta_by_a_z() -> None:
    m = _map()
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(m.dim, generator=gen, dtype=torch.float64)
    dz = torch.randn(m.dim, generator=gen, dtype=torch.float64)
    moved = m.lift(z + dz) - m.lift(z)
    for idx, ((a, b), (s, e)) in enumerate(zip(m.z_ranges, m.param_ranges, strict=True)):
        a_l = m.basis(idx)
        expected = dz[a:b] if a_l is None else a_l @ dz[a:b]
        torch.testing.assert_close(moved[s:e], expected, atol=1e-12, rtol=0)


def test_project_inverts_lift_on_low_rank_tensors() -> None:
    m = _map()
    z = torch.randn(m.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(m.project(m.lift(z)), z, atol=1e-10, rtol=0)


def test_basis_scale_unit_variance_per_parameter() -> None:
    m = _map(sizes=[20000], rank=16)
    a = m.basis(0)
    # Entries N(0, 1/r): a unit z vector moves each parameter with variance ~ 1.
    assert a.var().item() == pytest.approx(1 / 16, rel=0.05)
    z = torch.ones(16, dtype=torch.float64) / 4  # ||z|| = 1
    assert (a @ z).var().item() == pytest.approx(1 / 16, rel=0.1)


def test_bases_regenerate_from_seed_and_epoch() -> None:
    a, b, c = _map(seed=1), _map(seed=1), _map(seed=2)
    assert torch.equal(a.basis(0), b.basis(0))
    assert not torch.allclose(a.basis(0), c.basis(0))
    first = a.basis(0).clone()
    theta = a.lift(torch.randn(a.dim, generator=torch.Generator().manual_seed(0)).double())
    z = a.project(theta)
    z_new = a.absorb(theta, z)
    assert not torch.allclose(a.basis(0), first)  # fresh directions after absorbing
    assert torch.equal(a.lift(z_new), theta)  # absorbing does not move the point
    assert torch.equal(z_new[~a.low_rank_mask], z[~a.low_rank_mask])
    assert z_new[a.low_rank_mask].abs().sum() == 0
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.basis(0), a.basis(0)) and b.epoch == 1


def _dense_candidates(m: SubspaceMap, z: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Reference: lift every perturbed z densely (what lift_block_deltas must equal)."""
    n_blocks, per_block, p = deltas.shape
    pad = n_blocks * p - m.dim
    z_pad = torch.cat([z, z.new_zeros(pad)])
    zs = z_pad.expand(n_blocks * per_block, -1).clone().view(n_blocks, per_block, n_blocks, p)
    for i in range(n_blocks):
        zs[i, :, i] += deltas[i]
    return m.lift(zs.reshape(n_blocks * per_block, -1)[:, : m.dim])


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    rank=st.integers(1, 8),
    block_dim=st.integers(1, 4),
    per_block=st.integers(1, 5),
)
def test_block_deltas_match_dense_lift(sizes, rank, block_dim, per_block) -> None:
    m = _map(block_dim=block_dim, sizes=sizes, rank=rank)
    gen = torch.Generator().manual_seed(len(sizes) * 100 + rank)
    z = torch.randn(m.dim, generator=gen, dtype=torch.float64)
    deltas = torch.randn(m.num_blocks, per_block, block_dim, generator=gen, dtype=torch.float64)
    fast = m.lift_block_deltas(m.lift(z), deltas)
    torch.testing.assert_close(fast, _dense_candidates(m, z, deltas), atol=1e-10, rtol=0)


def test_padding_coordinates_never_move_parameters() -> None:
    m = _map(block_dim=3)  # 20 coordinates in 7 blocks: coordinate 20 is padding
    deltas = torch.zeros(m.num_blocks, 1, 3, dtype=torch.float64)
    deltas[-1, 0, 2] = 100.0
    x = m.lift(m.initial_z())
    assert torch.equal(m.lift_block_deltas(x, deltas)[-1], x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sizes=[], rank=2), "sizes must be positive"),
        (dict(sizes=[3, 0], rank=2), "sizes must be positive"),
        (dict(sizes=[3, 4], rank=[2]), "rank has 1 entries but sizes has 2"),
        (dict(sizes=[3], rank=0), "rank must be positive"),
        (dict(sizes=[3], rank=2, absorb_interval=0), "absorb_interval"),
    ],
)
def test_bad_subspace_spec(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Subspace(**kwargs)


def test_sizes_must_match_x0() -> None:
    with pytest.raises(ValueError, match="subspace sizes sum to 7 but x0 has shape"):
        SubspaceMap(Subspace(sizes=[3, 4], rank=2), torch.zeros(8), 2, 0)


def test_large_vector_candidates_are_cheap() -> None:
    """100k parameters in a 128-D space: a 256-candidate batch without a dense lift."""
    sizes = [80000, 128, 19712, 160]
    m = SubspaceMap(Subspace(sizes=sizes, rank=32), torch.zeros(sum(sizes)), 2, 0)
    assert m.dim == 128 and m.num_blocks == 64
    deltas = torch.zeros(64, 4, 2)
    deltas[10, 2, 1] = 1.0  # block 10 = z coordinates 20, 21: tensor 0, column 21 of A_0
    out = m.lift_block_deltas(torch.zeros(sum(sizes)), deltas)
    assert out.shape == (256, 100000)
    torch.testing.assert_close(out[10 * 4 + 2, :80000], m.basis(0)[:, 21])
    assert out[10 * 4 + 2, 80000:].abs().sum() == 0
    assert out.abs().sum(1).nonzero().squeeze(1).tolist() == [42]
    assert math.isclose(m.basis(0).std().item(), 1 / math.sqrt(32), rel_tol=0.02)


@pytest.mark.parametrize("rule", ["sqrt", "size"])
@pytest.mark.parametrize(
    "sizes", [[2048, 32, 320, 10], [100352, 128, 1280, 10], [3, 7, 500], [5120], [48, 24]]
)
def test_shared_ranks_keep_the_total_in_whole_blocks(rule: str, sizes: list[int]) -> None:
    ranks = allocate_ranks(sizes, 64, rule, block=2)
    equal = Subspace(sizes=sizes, rank=64)
    shared = Subspace(sizes=sizes, rank=ranks)
    assert shared.dim == equal.dim  # as many candidates per step as equal ranks
    for n, r in zip(sizes, ranks, strict=True):
        assert min(n, 2) <= r <= n
        assert r % 2 == 0 or r == n  # whole blocks, unless the tensor is kept in full
    big = max(range(len(sizes)), key=lambda i: sizes[i])
    assert ranks[big] == max(ranks)


def test_ranks_by_size_give_a_big_tensor_most_directions() -> None:
    # 2,410 values, 85 % in the first tensor: equal ranks give it 64 of 170 coordinates.
    assert allocate_ranks([2048, 32, 320, 10], 64, "size") == [142, 4, 22, 2]
    assert allocate_ranks([2048, 32, 320, 10], 64, "sqrt") == [106, 14, 42, 8]
    assert allocate_ranks([2048, 32, 320, 10], 64, "equal") == [64] * 4
    with pytest.raises(ValueError, match="rank rule must be one of"):
        allocate_ranks([10], 4, "log")


def test_the_joint_rule_is_one_subspace_with_the_equal_rules_coordinates() -> None:
    joint = search_subspace([2048, 32, 320, 10], 64, "joint")
    assert joint.sizes == (2410,) and joint.ranks == (64 + 32 + 64 + 10,)
    assert joint.dim == search_subspace([2048, 32, 320, 10], 64, "equal").dim
    # Tensors that all fit the rank are searched in full either way.
    assert search_subspace([48, 24], 64, "joint").full == (True,)
    with pytest.raises(ValueError, match="see search_subspace"):
        allocate_ranks([10], 4, "joint")
