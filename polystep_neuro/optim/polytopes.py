"""Polytope direction templates and random rotations for PolyStep.

Each block of the search vector is probed along the unit-norm vertex directions of a regular
polytope.  A fresh random rotation per block and step makes the probed directions cover the
whole sphere over time, so no axis of the block is favoured.
"""

from __future__ import annotations

import itertools
import math

import torch

POLYTOPES = ("simplex", "orthoplex", "cube")

# 2**16 vertices per block would already mean 65536 evaluations per block and step.
_MAX_CUBE_DIM = 16


def num_vertices(name: str, dim: int) -> int:
    """Number of vertices V of polytope ``name`` in ``dim`` dimensions."""
    _check(name, dim)
    if name == "simplex":
        return dim + 1
    if name == "orthoplex":
        return 2 * dim
    return 2**dim


def polytope_vertices(
    name: str,
    dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Unit-norm vertex directions ``(V, dim)`` of a regular polytope centred at the origin.

    - ``simplex``: ``dim + 1`` vertices with pairwise inner product ``-1/dim``;
    - ``orthoplex``: ``±e_i``, ``2 * dim`` vertices (the cross-polytope);
    - ``cube``: ``(±1, ..., ±1) / sqrt(dim)``, ``2**dim`` vertices.

    All templates sum to zero, so equal weights on every vertex produce no move.
    """
    _check(name, dim)
    if name == "orthoplex":
        eye = torch.eye(dim, dtype=torch.float64)
        verts = torch.cat([eye, -eye], dim=0)
    elif name == "cube":
        signs = list(itertools.product((1.0, -1.0), repeat=dim))
        verts = torch.tensor(signs, dtype=torch.float64) / math.sqrt(dim)
    else:
        verts = _simplex(dim)
    return verts.to(dtype=dtype, device=device)


def _simplex(dim: int) -> torch.Tensor:
    """Regular simplex from the Helmert basis of the hyperplane orthogonal to (1, ..., 1).

    The columns of the Helmert sub-matrix are the centred standard basis vectors of
    R^(dim+1) written in an orthonormal basis of that hyperplane; normalising them gives the
    vertices.  Closed form, so the template is identical on every machine.
    """
    helmert = torch.zeros(dim, dim + 1, dtype=torch.float64)
    for k in range(1, dim + 1):
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -float(k)
        helmert[k - 1] /= math.sqrt(k * (k + 1))
    verts = helmert.T  # (dim + 1, dim)
    return verts / verts.norm(dim=1, keepdim=True)


def random_rotations(
    count: int,
    dim: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``count`` independent Haar-random rotations in SO(dim), shape ``(count, dim, dim)``.

    QR of a Gaussian matrix gives an orthogonal Q; multiplying Q's columns by the signs of
    R's diagonal makes it Haar-distributed on O(dim).  Flipping the first column of those with
    determinant -1 maps O(dim) onto SO(dim) while keeping the distribution uniform.
    Drawn from ``generator`` only (never the global RNG) so runs are reproducible.
    """
    if count < 0 or dim < 1:
        raise ValueError(f"random_rotations needs count >= 0 and dim >= 1, got {count}, {dim}")
    gauss = torch.randn(count, dim, dim, generator=generator, dtype=dtype, device=device)
    q, r = torch.linalg.qr(gauss)
    diag_sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    diag_sign = torch.where(diag_sign == 0, torch.ones_like(diag_sign), diag_sign)
    q = q * diag_sign.unsqueeze(-2)
    det_sign = torch.sign(torch.linalg.det(q))
    q[:, :, 0] = q[:, :, 0] * det_sign.unsqueeze(-1)
    return q


def _check(name: str, dim: int) -> None:
    if name not in POLYTOPES:
        raise ValueError(f"polytope must be one of {POLYTOPES}, got {name!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"block_dim must be a positive integer, got {dim!r}")
    if name == "cube" and dim > _MAX_CUBE_DIM:
        raise ValueError(
            f"block_dim={dim} is too large for the cube polytope (2**{dim} vertices); "
            f"use at most {_MAX_CUBE_DIM} or another polytope"
        )
