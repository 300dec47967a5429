"""Which parameter sets share which network prefix: the simulator computes each once.

PolyStep's candidates differ in one block each, so most sets agree on most layers; sets that
agree bit for bit on every varied parameter of a prefix share its spikes.  Grouping is
exact: a cheap integer fingerprint proposes the groups and a full comparison confirms them
(any disagreement falls back to comparing every bit with ``torch.unique``).
"""

from __future__ import annotations

import torch

_MIX_SEED = 0x5EED
_SAMPLE_COLUMNS = 16  # per value, for the all-distinct shortcut


def distinct_sets(
    group: torch.Tensor, values: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct (prefix group, varied values) combinations, compared bit for bit.

    Returns ``rep``, the smallest set index of each distinct combination (ascending), and
    ``inverse``, the index into ``rep`` of every set's combination.
    """
    num_sets = group.shape[0]
    bits = [_as_bits(value, num_sets) for value in values]
    every = torch.arange(num_sets, device=group.device)
    if _distinct_on_a_sample(group, bits):
        return every, every
    keys = torch.stack([group, *(_fingerprint(b) for b in bits)], dim=1)
    rep, inverse = _first_of_each(keys)
    if not all(_same_as_rep(b, rep[inverse]) for b in bits):  # a fingerprint collision:
        # compare every bit instead
        keys = torch.cat([group.view(-1, 1), *(b.to(torch.int64) for b in bits)], dim=1)
        rep, inverse = _first_of_each(keys)
    return rep, inverse


def _distinct_on_a_sample(group: torch.Tensor, bits: list[torch.Tensor]) -> bool:
    """Whether the sets already differ pairwise on a few columns of each value: rows that
    differ anywhere differ, so then every set is its own group, found without reading
    the rest (sets that move every tensor, as a joint subspace's do, differ everywhere;
    fingerprinting 128 x 784 weights of 400 sets took a third of a step)."""
    if group.shape[0] < 2:
        return True
    sample = []
    for b in bits:
        step = max(1, b.shape[1] // _SAMPLE_COLUMNS)
        sample.append(b[:, ::step][:, :_SAMPLE_COLUMNS].to(torch.int64))
    keys = torch.cat([group.view(-1, 1), *sample], dim=1)
    return torch.unique(keys, dim=0).shape[0] == group.shape[0]


def _same_as_rep(bits: torch.Tensor, rep_of_set: torch.Tensor) -> bool:
    """Whether every set merged into another set's group has exactly its values."""
    merged = torch.nonzero(rep_of_set != torch.arange(rep_of_set.numel(), device=bits.device))
    if merged.numel() == 0:
        return True
    merged = merged[:, 0]
    return bool(torch.equal(bits[merged], bits[rep_of_set[merged]]))


def _as_bits(value: torch.Tensor, num_sets: int) -> torch.Tensor:
    """(V, ...) float32 values as (V, n) int32 bit patterns (so -0.0 differs from 0.0)."""
    flat = value.reshape(value.shape[0], -1).contiguous().view(torch.int32)
    return flat.expand(num_sets, -1)


def _fingerprint(bits: torch.Tensor) -> torch.Tensor:
    """Per row, sum of bits times fixed random odd multipliers, wrapping in int32.

    Integer addition is associative, so the value depends only on the row's contents,
    never on how the reduction is ordered: equal rows always get equal fingerprints.
    """
    gen = torch.Generator().manual_seed(_MIX_SEED + bits.shape[1])
    mix = torch.randint(-(2**30), 2**30, (bits.shape[1],), generator=gen, dtype=torch.int32)
    mix = (mix * 2 + 1).to(bits.device)
    return (bits * mix).sum(dim=1, dtype=torch.int32).to(torch.int64)


def _first_of_each(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct rows of ``keys``, numbered in order of first appearance."""
    num_sets = keys.shape[0]
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    distinct = int(inverse.max()) + 1
    arange = torch.arange(num_sets, device=keys.device)
    rep = torch.full((distinct,), num_sets, dtype=torch.long, device=keys.device)
    rep.scatter_reduce_(0, inverse, arange, "amin")
    order = torch.argsort(rep)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(distinct, device=keys.device)
    return rep[order], rank[inverse]
