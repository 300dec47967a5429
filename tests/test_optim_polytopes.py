"""Polytope templates and random rotations."""

from __future__ import annotations

import itertools

import pytest
import torch

from polystep_neuro.optim import num_vertices, polytope_vertices, random_rotations


@pytest.mark.parametrize(
    ("name", "dim", "count"),
    [
        ("orthoplex", 1, 2),
        ("orthoplex", 2, 4),
        ("orthoplex", 5, 10),
        ("simplex", 1, 2),
        ("simplex", 2, 3),
        ("simplex", 5, 6),
        ("cube", 1, 2),
        ("cube", 2, 4),
        ("cube", 4, 16),
    ],
)
def test_vertex_counts_unit_norm_and_centred(name: str, dim: int, count: int) -> None:
    verts = polytope_vertices(name, dim)
    assert verts.shape == (count, dim)
    assert num_vertices(name, dim) == count
    torch.testing.assert_close(verts.norm(dim=1), torch.ones(count, dtype=torch.float64))
    # Centred: equal weights on every vertex must not move the block.
    torch.testing.assert_close(verts.sum(0), torch.zeros(dim, dtype=torch.float64))
    # No duplicated vertex.
    assert torch.cdist(verts, verts).add(torch.eye(count, dtype=torch.float64)).min() > 0.1


@pytest.mark.parametrize("dim", [1, 2, 3, 6])
def test_simplex_is_regular(dim: int) -> None:
    verts = polytope_vertices("simplex", dim)
    gram = verts @ verts.T
    expected = torch.full((dim + 1, dim + 1), -1.0 / dim, dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected)


def test_orthoplex_and_cube_values() -> None:
    assert polytope_vertices("orthoplex", 2).tolist() == [[1, 0], [0, 1], [-1, 0], [0, -1]]
    cube = polytope_vertices("cube", 2) * 2**0.5
    assert sorted(map(tuple, cube.round().tolist())) == sorted(
        itertools.product((1.0, -1.0), repeat=2)
    )


def test_vertices_dtype_device() -> None:
    verts = polytope_vertices("orthoplex", 3, dtype=torch.float32, device="cpu")
    assert verts.dtype == torch.float32 and verts.device.type == "cpu"


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_rotations_orthogonal_det_plus_one(dim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    rot = random_rotations(500, dim, generator=gen)
    eye = torch.eye(dim, dtype=torch.float64).expand(500, dim, dim)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(500, dtype=torch.float64))


def test_rotations_reproducible_and_spread() -> None:
    a = random_rotations(2000, 3, generator=torch.Generator().manual_seed(5))
    b = random_rotations(2000, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # Haar on SO(3): the mean matrix is 0 and a rotated unit vector is uniform on the sphere.
    assert a.mean(0).abs().max() < 0.05
    rotated = a[:, :, 0]
    assert rotated.mean(0).abs().max() < 0.05
    torch.testing.assert_close(
        (rotated**2).mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0
    )


def test_rotations_float32() -> None:
    rot = random_rotations(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert rot.dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "dim", "match"),
    [
        ("hexagon", 2, "polytope must be one of"),
        ("orthoplex", 0, "block_dim must be a positive integer"),
        ("simplex", 1.5, "block_dim must be a positive integer"),
        ("cube", 17, "too large for the cube"),
    ],
)
def test_bad_polytope_arguments(name, dim, match) -> None:
    with pytest.raises(ValueError, match=match):
        polytope_vertices(name, dim)
