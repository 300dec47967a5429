"""Per-tensor random low-rank subspaces: search a few hundred coordinates, move many parameters.

``theta = theta0 + sum_l A_l z_l`` with one Gaussian matrix ``A_l`` (``n_l x r_l``, entries
``N(0, 1/r_l)`` so a unit step in z has unit variance per parameter) per parameter tensor.
Separate subspaces per tensor keep a bias vector from being mixed with a weight matrix of a
very different scale when the parameters are raw values; once every tensor is measured in
its own units (the adaptation recipe's probe units) one subspace over all of them
(:func:`search_subspace`'s ``joint`` rule, the recipe's default) lets every direction move
every tensor.  Tensors with ``n_l <= r_l`` gain nothing from a projection and are
kept in full: their coordinates *are* the parameters (``theta_l = z_l``), so lift and project
are exact copies there.

A weight matrix named in ``Subspace.outer`` gets directions that are outer products
``u v^T`` instead: every probe then moves it by a low-rank term, which a simulator whose
input to that matrix is shared among the candidates (the first layer's) evaluates from the
factors without forming the moved matrix.

Every ``absorb_interval`` steps the current point is absorbed into ``theta0``, the low-rank
coordinates are reset to zero and fresh matrices are drawn, so over time the search covers
new directions.  The matrices are regenerated from ``(seed, epoch, tensor)`` with a generator
on the optimiser's own device (drawing them on the CPU and copying cost seconds per redraw at a
million parameters on a GPU), so a checkpoint stores only the seed and resumes bit-identically
on the same kind of device; CPU and CUDA draw different matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Subspace:
    """Specification of the per-tensor subspaces (what the user passes to ``PolyStep``).

    Args:
        sizes: number of parameters in each tensor, in the order they appear in ``x0``.
        rank: subspace rank, one int for every tensor or one per tensor.
        absorb_interval: absorb and redraw every this many steps (``None``: never).
        seed: seed of the random matrices; ``None`` derives it from the optimiser's seed.
        outer: weight matrices, as ``(offset, rows, cols)`` in ``x0``, whose part of every
            direction is drawn as an outer product ``u v^T`` (entries of unit variance, as
            the Gaussian ones): a probe then moves such a matrix by a term of rank
            ``block_dim``, which a simulator evaluates without forming the moved matrix
            (``SubspaceMap.probe_factors``).  Each must lie inside one tensor searched in a
            subspace (not kept in full).
    """

    sizes: Sequence[int]
    rank: int | Sequence[int]
    absorb_interval: int | None = 50
    seed: int | None = None
    outer: Sequence[tuple[int, int, int]] = ()
    ranks: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        if not sizes or any(_bad_int(s) or s < 1 for s in sizes):
            raise ValueError(f"subspace sizes must be positive integers, got {self.sizes!r}")
        if isinstance(self.rank, Sequence):
            ranks = tuple(self.rank)
            if len(ranks) != len(sizes):
                raise ValueError(
                    f"subspace rank has {len(ranks)} entries but sizes has {len(sizes)}"
                )
        else:
            ranks = (self.rank,) * len(sizes)
        if any(_bad_int(r) or r < 1 for r in ranks):
            raise ValueError(f"subspace rank must be positive integers, got {self.rank!r}")
        interval = self.absorb_interval
        if interval is not None and (_bad_int(interval) or interval < 1):
            raise ValueError(
                f"absorb_interval must be a positive integer or None, got {interval!r}"
            )
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "ranks", ranks)
        object.__setattr__(self, "outer", _checked_outer(self.outer, sizes, self.full))

    @property
    def num_params(self) -> int:
        return sum(self.sizes)

    @property
    def full(self) -> tuple[bool, ...]:
        """Which tensors are kept in full (``n_l <= r_l``)."""
        return tuple(n <= r for n, r in zip(self.sizes, self.ranks, strict=True))

    @property
    def dim(self) -> int:
        """Dimension D of the search space."""
        return sum(n if f else r for n, r, f in zip(self.sizes, self.ranks, self.full, strict=True))


RANK_RULES = ("equal", "sqrt", "size", "joint")


def allocate_ranks(
    sizes: Sequence[int], rank: int, rule: str = "equal", block: int = 2
) -> list[int]:
    """Per tensor, the subspace rank.

    ``equal`` gives each tensor ``rank`` (a tensor no larger is kept in full).  ``sqrt`` and
    ``size`` share the same total number of search coordinates, ``sum(min(n, rank))``, out
    in proportion to the square root of each tensor's size, or to its size, in whole blocks
    of ``block`` coordinates (so no block of PolyStep's probes straddles two tensors): at
    least one block and at most its size each, the rest by largest remainders, so the
    total (and the number of candidates per step) is the same as ``equal``'s.  A larger
    tensor then gets more of the directions, as an evolution strategy's random directions,
    which span every parameter, give it."""
    sizes = [int(n) for n in sizes]
    if rule == "equal":
        return [int(rank)] * len(sizes)
    if rule == "joint":
        raise ValueError("the joint rule shares one subspace among tensors: see search_subspace")
    if rule not in RANK_RULES:
        raise ValueError(f"rank rule must be one of {RANK_RULES}, got {rule!r}")
    weight = [math.sqrt(n) if rule == "sqrt" else float(n) for n in sizes]
    ranks = [min(n, block) for n in sizes]
    left = sum(min(n, int(rank)) for n in sizes) - sum(ranks)
    while left > 0:
        open_ = [i for i, n in enumerate(sizes) if ranks[i] < n]
        if not open_:
            break
        share = sum(weight[i] for i in open_)
        want = {i: left * weight[i] / share for i in open_}
        give = {i: min(block * int(want[i] // block), sizes[i] - ranks[i]) for i in open_}
        if sum(give.values()) == 0:  # no whole block each: the largest shares first
            i = max(open_, key=lambda i: (want[i], -i))
            give[i] = min(block, left, sizes[i] - ranks[i])
        for i, g in give.items():
            ranks[i] += g
            left -= g
    return ranks


def search_subspace(
    sizes: Sequence[int],
    rank: int,
    rule: str = "equal",
    block: int = 2,
    absorb_interval: int | None = 50,
) -> Subspace:
    """The subspace of a rank rule: one per tensor (:func:`allocate_ranks`), or for
    ``joint`` one over all the tensors together with as many coordinates as ``equal``
    gives in all, so every search direction moves every tensor (as an evolution
    strategy's do) instead of one."""
    sizes = [int(n) for n in sizes]
    if rule != "joint":
        return Subspace(sizes=sizes, rank=allocate_ranks(sizes, rank, rule, block),
                        absorb_interval=absorb_interval)  # fmt: skip
    equal = Subspace(sizes=sizes, rank=int(rank))  # its coordinates, drawn over every tensor
    return Subspace(sizes=[sum(sizes)], rank=equal.dim, absorb_interval=absorb_interval)


def _checked_outer(
    outer: Sequence[tuple[int, int, int]], sizes: tuple[int, ...], full: tuple[bool, ...]
) -> tuple[tuple[int, int, int], ...]:
    """``outer`` as a tuple of int triples; ValueError for a matrix that is empty, overlaps
    another, or does not lie inside one tensor searched in a subspace."""
    checked = tuple((int(o), int(r), int(c)) for o, r, c in outer)
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    end_of_last = 0
    for offset, rows, cols in sorted(checked):
        tensor = int(np.searchsorted(starts, offset, side="right")) - 1
        inside = 0 <= tensor < len(sizes) and offset + rows * cols <= starts[tensor + 1]
        if rows < 1 or cols < 1 or offset < end_of_last or not inside or full[tensor]:
            raise ValueError(
                f"outer matrix (offset {offset}, {rows} x {cols}) must lie inside one tensor "
                "searched in a subspace, without overlapping another"
            )
        end_of_last = offset + rows * cols
    return checked


def _bad_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer))


class SubspaceMap:
    """The linear map z -> theta for one optimiser, plus its absorb/redraw state.

    Also applies batches of *block* perturbations (only ``block_dim`` coordinates of z change
    per candidate) straight in parameter space, so a batch of N candidates costs
    ``O(N * block_dim * n)`` instead of a dense ``O(N * D * n)`` lift.
    """

    def __init__(self, spec: Subspace, theta0: torch.Tensor, block_dim: int, seed: int) -> None:
        if theta0.ndim != 1 or theta0.numel() != spec.num_params:
            raise ValueError(
                f"subspace sizes sum to {spec.num_params} but x0 has shape {tuple(theta0.shape)}"
            )
        self.spec = spec
        self.block_dim = block_dim
        self.seed = int(spec.seed if spec.seed is not None else seed)
        self.dtype = theta0.dtype
        self.device = theta0.device
        self.theta0 = theta0.detach().clone()
        self.epoch = 0
        p_offsets = np.concatenate([[0], np.cumsum(spec.sizes)]).tolist()
        zdims = [n if f else r for n, r, f in zip(spec.sizes, spec.ranks, spec.full, strict=True)]
        z_offsets = np.concatenate([[0], np.cumsum(zdims)]).tolist()
        self.param_ranges = [(p_offsets[i], p_offsets[i + 1]) for i in range(len(spec.sizes))]
        self.z_ranges = [(z_offsets[i], z_offsets[i + 1]) for i in range(len(spec.sizes))]
        self.dim = spec.dim
        self.num_blocks = math.ceil(self.dim / block_dim)
        mask = torch.zeros(self.dim, dtype=torch.bool)
        for (a, b), f in zip(self.z_ranges, spec.full, strict=True):
            mask[a:b] = not f
        self.low_rank_mask = mask.to(self.device)
        self._build_full_index()
        self._bases: list[torch.Tensor | None] = []
        self._draw_bases()

    # ----------------------------------------------------------------- random matrices
    def _draw_bases(self) -> None:
        """Regenerate every ``A_l`` from ``(seed, epoch, l)``, stored block-padded.

        For tensor l with z-range [a, b) the stored tensor has shape ``(nb, p, n_l)``: rows of
        ``A_l^T`` placed at their position inside the blocks that cover [a, b), zero rows for
        coordinates of those blocks that belong to other tensors or to the padding.
        """
        p = self.block_dim
        self._bases = []
        self._factors: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
        for idx, ((a, b), (s, e), full) in enumerate(
            zip(self.z_ranges, self.param_ranges, self.spec.full, strict=True)
        ):
            if full:
                self._bases.append(None)
                continue
            rank = b - a
            gen = torch.Generator(device=self.device)
            seq = np.random.SeedSequence([self.seed, self.epoch, idx])
            gen.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
            i0, i1 = a // p, -(-b // p)
            # empty, then zeros in the padding only: zeroing every row first wrote the
            # whole basis twice (a tenth of a step on a 100k-parameter network)
            padded = torch.empty((i1 - i0) * p, e - s, dtype=self.dtype, device=self.device)
            padded[: a - i0 * p] = 0
            padded[b - i0 * p :] = 0
            rows = padded[a - i0 * p : b - i0 * p]
            matrices = [m for m in self.spec.outer if s <= m[0] < e]
            if not matrices:
                torch.randn(rank, e - s, generator=gen, dtype=self.dtype, device=self.device,
                            out=rows)  # fmt: skip
                rows /= math.sqrt(rank)
            else:
                self._draw_with_outer(idx, rows, s, matrices, gen)
            self._bases.append(padded.view(i1 - i0, p, e - s))

    def _draw_with_outer(
        self,
        tensor: int,
        rows: torch.Tensor,
        s: int,
        matrices: list[tuple[int, int, int]],
        gen: torch.Generator,
    ) -> None:
        """Tensor ``tensor``'s basis ``rows`` (rank x n_l) with its ``outer`` matrices'
        columns drawn as outer products (their factors kept for ``probe_factors``) and the
        other columns Gaussian, all of unit variance over the rank."""
        rank = rows.shape[0]
        scale = 1.0 / math.sqrt(rank)
        matrices = sorted(matrices)
        start = 0
        pieces = []
        for offset, n_rows, n_cols in matrices:
            pieces.append((start, offset - s))
            start = offset - s + n_rows * n_cols
        pieces.append((start, rows.shape[1]))
        width = sum(b - a for a, b in pieces)
        if width:
            other = torch.randn(rank, width, generator=gen, dtype=self.dtype, device=self.device)
            other *= scale
            at = 0
            for a, b in pieces:
                rows[:, a:b] = other[:, at : at + b - a]
                at += b - a
        for offset, n_rows, n_cols in matrices:
            left = torch.randn(rank, n_rows, generator=gen, dtype=self.dtype, device=self.device)
            right = torch.randn(rank, n_cols, generator=gen, dtype=self.dtype, device=self.device)
            left *= scale
            product = left.unsqueeze(2) * right.unsqueeze(1)
            rows[:, offset - s : offset - s + n_rows * n_cols] = product.view(rank, -1)
            self._factors[offset] = (tensor, left, right)

    def basis(self, tensor: int) -> torch.Tensor | None:
        """``A_l`` (``n_l x r_l``) of tensor ``l``; ``None`` for tensors kept in full."""
        padded = self._bases[tensor]
        if padded is None:
            return None
        a, b = self.z_ranges[tensor]
        start = a - (a // self.block_dim) * self.block_dim
        rows = padded.reshape(-1, padded.shape[-1])[start : start + b - a]
        return rows.T

    def _build_full_index(self) -> None:
        """Static index of the (block, coordinate-in-block) pairs that are full parameters."""
        p = self.block_dim
        coord_to_param = torch.full((self.num_blocks * p,), -1, dtype=torch.long)
        ranges = zip(self.z_ranges, self.param_ranges, self.spec.full, strict=True)
        for (a, b), (s, _), full in ranges:
            if full:
                coord_to_param[a:b] = torch.arange(s, s + b - a)
        c2p = coord_to_param.view(self.num_blocks, p)
        blk, j = torch.nonzero(c2p >= 0, as_tuple=True)
        self._full_block = blk.to(self.device)
        self._full_j = j.to(self.device)
        self._full_param = c2p[blk, j].to(self.device)
        self._full_z = torch.nonzero(coord_to_param[: self.dim] >= 0).squeeze(1).to(self.device)
        self._full_theta = coord_to_param[: self.dim][self._full_z.cpu()].to(self.device)

    def block_tensors(self) -> torch.Tensor:
        """(P,) the tensor each block of z belongs to (that of its first coordinate)."""
        starts = torch.tensor([a for a, _ in self.z_ranges], dtype=torch.long)
        first = torch.arange(self.num_blocks, dtype=torch.long) * self.block_dim
        return (torch.searchsorted(starts, first, right=True) - 1).to(self.device)

    # ------------------------------------------------------------------ maps
    def initial_z(self) -> torch.Tensor:
        """z that lifts exactly to ``theta0``: parameters in full tensors, zeros elsewhere."""
        z = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        z[self._full_z] = self.theta0[self._full_theta]
        return z

    def lift(self, z: torch.Tensor) -> torch.Tensor:
        """``theta`` for ``z`` of shape ``(D,)`` or ``(N, D)``."""
        squeeze = z.ndim == 1
        zb = z.unsqueeze(0) if squeeze else z
        theta = self.theta0.expand(zb.shape[0], -1).clone()
        for idx, ((a, b), (s, e)) in enumerate(zip(self.z_ranges, self.param_ranges, strict=True)):
            a_l = self.basis(idx)
            if a_l is None:
                theta[:, s:e] = zb[:, a:b]
            else:
                theta[:, s:e] += zb[:, a:b] @ a_l.T
        return theta.squeeze(0) if squeeze else theta

    def lift_delta(self, dz: torch.Tensor) -> torch.Tensor:
        """The parameter move ``(n,)`` of a coordinate move ``dz`` ``(D,)`` (linear part of
        :meth:`lift`: no origin, so a full tensor's move is ``dz`` exactly)."""
        delta = torch.zeros_like(self.theta0)
        for idx, ((a, b), (s, e)) in enumerate(zip(self.z_ranges, self.param_ranges, strict=True)):
            a_l = self.basis(idx)
            delta[s:e] = dz[a:b] if a_l is None else a_l @ dz[a:b]
        return delta

    def project(self, theta: torch.Tensor) -> torch.Tensor:
        """Least-squares z for ``theta`` (exact copy on full tensors)."""
        z = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for idx, ((a, b), (s, e)) in enumerate(zip(self.z_ranges, self.param_ranges, strict=True)):
            a_l = self.basis(idx)
            if a_l is None:
                z[a:b] = theta[s:e]
            else:
                rhs = (theta[s:e] - self.theta0[s:e]).unsqueeze(1)
                z[a:b] = torch.linalg.lstsq(a_l, rhs).solution.squeeze(1)
        return z

    def lift_block_deltas(self, x: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Candidates ``(P * M, n)`` from the current point and per-block z perturbations.

        ``deltas`` has shape ``(P, M, p)``: candidate ``i * M + m`` is ``x`` moved by
        ``deltas[i, m]`` in the coordinates of block ``i`` only (block-major order).
        Padding coordinates of the last block have zero basis rows and no parameter, so they
        never move anything.
        """
        n_blocks, per_block, p = deltas.shape
        if n_blocks != self.num_blocks or p != self.block_dim:
            raise ValueError(
                f"deltas must have shape ({self.num_blocks}, M, {self.block_dim}), "
                f"got {tuple(deltas.shape)}"
            )
        out = x.expand(n_blocks * per_block, -1).clone()
        out3 = out.view(n_blocks, per_block, -1)
        if self._full_block.numel():
            blk = self._full_block.unsqueeze(1)
            rows = torch.arange(per_block, device=self.device).unsqueeze(0)
            col = self._full_param.unsqueeze(1)
            out3[blk, rows, col] += deltas[self._full_block, :, self._full_j]
        for idx, (a, b) in enumerate(self.z_ranges):
            padded = self._bases[idx]
            if padded is None:
                continue
            s, e = self.param_ranges[idx]
            i0, i1 = a // p, -(-b // p)
            target = out3[i0:i1, :, s:e]
            # p rank-1 updates: memory-bound, and faster on CPU than bmm for tiny p.
            for j in range(p):
                target.addcmul_(deltas[i0:i1, :, j : j + 1], padded[:, j : j + 1, :])
        return out

    def probe_factors(self, offset: int, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``lift_block_deltas(x, deltas)`` adds to the ``outer`` matrix at ``offset``,
        as factors: candidate c's matrix is x's plus ``u[c] @ vt[c]``, with ``u``
        (N, rows, p) and ``vt`` (N, p, cols); zero for the blocks that do not reach it."""
        if offset not in self._factors:
            raise ValueError(f"no outer matrix at offset {offset}: {list(self._factors)}")
        tensor, left, right = self._factors[offset]
        n_blocks, per_block, p = deltas.shape
        a, b = self.z_ranges[tensor]
        coord = torch.arange(n_blocks * p, device=self.device).view(n_blocks, p) - a
        reach = ((coord >= 0) & (coord < b - a)).to(self.dtype).unsqueeze(2)
        index = coord.clamp(0, b - a - 1)
        lefts, rights = left[index] * reach, right[index] * reach  # (P, p, rows | cols)
        u = torch.einsum("imj,ijr->imrj", deltas, lefts).reshape(-1, left.shape[1], p)
        vt = rights.unsqueeze(1).expand(-1, per_block, -1, -1).reshape(-1, p, right.shape[1])
        return u, vt

    def rebase(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Move the origin so that ``z`` lifts to ``theta`` (a point off the current subspace,
        e.g. after a parameter-space momentum step); returns the z to keep.

        Low-rank coordinates stay; ``theta0`` takes up the difference.  Full tensors have no
        origin: their coordinates become the parameters.
        """
        z = z.clone()
        z[self._full_z] = theta[self._full_theta]
        self.theta0 = self.theta0 + (theta - self.lift(z))
        return z

    # --------------------------------------------------------------- absorb / state
    def absorb(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Make ``theta`` the new origin, redraw the matrices, return the matching z."""
        self.theta0 = theta.detach().clone()
        self.epoch += 1
        self._draw_bases()
        z = z.clone()
        z[self.low_rank_mask] = 0
        return z

    def state_dict(self) -> dict:
        return {"theta0": self.theta0.clone(), "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        theta0 = state["theta0"].to(dtype=self.dtype, device=self.device)
        if theta0.shape != self.theta0.shape:
            raise ValueError(
                f"subspace theta0 has shape {tuple(theta0.shape)}, expected "
                f"{tuple(self.theta0.shape)}"
            )
        self.theta0 = theta0.clone()
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        self._draw_bases()
