"""Turn a block x vertex cost matrix into barycentric weights.

Both solvers return a ``(P, V)`` matrix whose rows are probability vectors: row ``i`` says how
much block ``i`` should move towards each of its vertices.  They are plain batched torch ops on
the cost tensor's device, so the weights never leave the accelerator.
"""

from __future__ import annotations

import math

import torch

SOLVERS = ("softmax", "sinkhorn")
# How the costs become the solver's input (see shape_costs).
SHAPINGS = ("shift", "rank", "tensor")

# Scale guard: a cost matrix whose entries are all (almost) equal carries no direction.
_TINY = 1e-12


def normalise_costs(costs: torch.Tensor) -> torch.Tensor:
    """Shift each row to start at 0 and divide by the mean of the shifted matrix.

    Subtracting the row minimum makes the softmax of each block independent of the absolute
    loss level.  Dividing by one scale for the whole matrix (the mean, which one outlier moves
    less than the max) makes ``epsilon`` unit-free while keeping the relative sharpness
    between blocks: a block whose costs barely differ gets nearly uniform weights (a small
    move), a block with a clear winner moves decisively.  If every row is flat the scale is
    guarded and the result is all zeros (uniform weights, no move).
    """
    if costs.ndim != 2:
        raise ValueError(f"costs must be a (blocks, vertices) matrix, got shape {costs.shape}")
    shifted = costs - costs.min(dim=1, keepdim=True).values
    scale = shifted.mean()
    if not torch.isfinite(scale) or scale <= _TINY:
        return torch.zeros_like(shifted)
    return shifted / scale


def shape_costs(
    costs: torch.Tensor, shaping: str = "shift", groups: torch.Tensor | None = None
) -> torch.Tensor:
    """The normalised (blocks, vertices) costs the solvers weigh.

    - ``shift``: :func:`normalise_costs` (each row from its minimum, one scale for all).
    - ``rank``: the costs' centred ranks over the whole batch first (OpenAI-ES's fitness
      shaping), then ``shift``: only the order of the costs counts, so one block whose
      costs differ by far more than the others' no longer sets the scale they move by.
    - ``tensor``: each row from its minimum, divided by the mean of its group's rows
      (``groups``: the group of each block, e.g. the tensor its coordinates belong to), so
      every group moves by the evidence within it, not by the most sensitive group's.
    """
    if shaping == "shift":
        return normalise_costs(costs)
    if shaping == "rank":
        flat = costs.reshape(-1)
        ranks = torch.empty_like(flat)
        ranks[torch.argsort(flat)] = torch.arange(flat.numel(), dtype=flat.dtype,
                                                  device=flat.device)  # fmt: skip
        return normalise_costs((ranks / max(flat.numel() - 1, 1) - 0.5).view_as(costs))
    if shaping == "tensor":
        if groups is None:
            raise ValueError("shaping='tensor' needs the group of every block")
        shifted = costs - costs.min(dim=1, keepdim=True).values
        count = torch.zeros(int(groups.max()) + 1, dtype=costs.dtype, device=costs.device)
        count.index_add_(0, groups, torch.ones_like(groups, dtype=costs.dtype))
        total = torch.zeros_like(count).index_add_(0, groups, shifted.mean(dim=1))
        scale = (total / count.clamp_min(1))[groups].unsqueeze(1)
        return torch.where(scale > _TINY, shifted / scale.clamp_min(_TINY), 0.0)
    raise ValueError(f"shaping must be one of {SHAPINGS}, got {shaping!r}")


def softmax_weights(
    costs: torch.Tensor, epsilon: float, *, normalised: bool = False
) -> torch.Tensor:
    """Softmax-OT: ``W[i] = softmax(-C_norm[i] / epsilon)`` independently per block
    (``normalised``: the costs are already normalised, e.g. by :func:`shape_costs`)."""
    _check_epsilon(epsilon)
    c = costs if normalised else normalise_costs(costs)
    return torch.softmax(-c / epsilon, dim=1)


def sinkhorn_weights(
    costs: torch.Tensor,
    epsilon: float,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    normalised: bool = False,
) -> torch.Tensor:
    """Entropic OT between uniform marginals over blocks and vertices, row-normalised.

    Log-domain Sinkhorn on the normalised cost with regularisation ``epsilon``: the plan is
    ``T = exp(f_i + g_v - C_iv / epsilon)`` with rows summing to ``1/P`` and columns to ``1/V``.
    Iterates until the column marginal error (the rows are exact after each ``f`` update) is
    below ``tol`` or ``max_iter`` is reached.  Returns ``P * T`` so rows sum to one.

    The vertex marginal makes every vertex index share the total mass equally across blocks.
    With many blocks (each block's polytope is rotated independently) this is a mild
    constraint and the plan is close to the per-block softmax; with one block it forces
    uniform weights, i.e. no move, so prefer ``softmax`` for a single block.
    """
    _check_epsilon(epsilon)
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    logk = -(costs if normalised else normalise_costs(costs)) / epsilon
    n_rows, n_cols = logk.shape
    log_a = -math.log(n_rows)
    log_b = -math.log(n_cols)
    f = torch.zeros(n_rows, dtype=logk.dtype, device=logk.device)
    g = torch.zeros(n_cols, dtype=logk.dtype, device=logk.device)
    for _ in range(max_iter):
        # The f update makes the row marginals exact; then check the column marginals.
        f = log_a - torch.logsumexp(logk + g.unsqueeze(0), dim=1)
        log_col = torch.logsumexp(logk + f.unsqueeze(1), dim=0) + g
        if (log_col.exp() - math.exp(log_b)).abs().sum() < tol:
            break
        g = g + (log_b - log_col)
    log_plan = logk + f.unsqueeze(1) + g.unsqueeze(0)
    # Row-normalise (exact even if max_iter stopped the iterations early).
    return torch.softmax(log_plan, dim=1)


def solve_weights(
    costs: torch.Tensor,
    epsilon: float,
    solver: str = "softmax",
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    normalised: bool = False,
) -> torch.Tensor:
    """Dispatch on the solver name."""
    if solver == "softmax":
        return softmax_weights(costs, epsilon, normalised=normalised)
    if solver == "sinkhorn":
        return sinkhorn_weights(costs, epsilon, tol=tol, max_iter=max_iter, normalised=normalised)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def _check_epsilon(epsilon: float) -> None:
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
