"""Quickstart: PolyStep on a black box with ask/tell, where gradients are useless.

The black box stands in for a device: it takes a batch of parameter vectors and returns one
cost per vector.  Inside, it rounds every parameter to a grid of 1/8 (as a chip stores
weights as small integers) and then scores the result, so the cost is piecewise constant:
its gradient is zero almost everywhere, and gradient descent cannot move.  PolyStep only
needs costs:

    opt = PolyStep.for_units(x0, total_steps=steps, unit=...)  # unit: a sensible probe
    for _ in range(steps):
        candidates = opt.ask()            # (N, dim): perturbed copies of the parameters
        opt.tell(black_box(candidates))   # (N,) costs, one per candidate, same order

``opt.step(black_box)`` does the same in one call.  ``polystep_neuro.optim`` imports nothing
else of the project, so this works for any black box, not only spiking networks.

Run (seconds, CPU)::

    python examples/01_quickstart_ask_tell.py
    python examples/01_quickstart_ask_tell.py --small                # for tests

The last line of output is a JSON summary (``summary: {...}``) for scripts.
"""

from __future__ import annotations

import argparse
import json

import torch

from polystep_neuro.optim import PolyStep


def make_black_box(dim: int, seed: int):
    """A quantised quadratic with its minimum 0 at a random target in [-1, 1]^dim."""
    target = torch.rand(dim, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    target = torch.round(target * 8) / 8  # reachable on the grid, so the minimum is 0

    def black_box(candidates: torch.Tensor) -> torch.Tensor:
        on_grid = torch.round(candidates * 8) / 8  # what the "device" can represent
        return ((on_grid - target) ** 2).sum(dim=-1)

    return black_box


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny sizes: runs in a second (tests)")
    p.add_argument("--dim", type=int, default=100, help="number of parameters")
    p.add_argument("--steps", type=int, default=300, help="PolyStep steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.small:
        args.dim, args.steps = 20, 120
    return args


def main() -> None:
    args = parse_args()
    black_box = make_black_box(args.dim, args.seed)
    x0 = torch.zeros(args.dim)

    # Gradients through the black box are zero: rounding is flat almost everywhere.
    probe = x0.clone().requires_grad_(True)
    black_box(probe[None]).sum().backward()
    print(
        f"black box: {args.dim} parameters, cost at x0 {float(black_box(x0[None])[0]):.3f}, "
        f"autograd gradient norm at x0 {float(probe.grad.norm()):.1f}"
    )

    # The recipe in one call: `unit` is a sensible probe for each parameter (here one step
    # of the device's grid, the smallest change the black box can see).
    opt = PolyStep.for_units(x0, total_steps=args.steps, unit=1 / 8, seed=args.seed)
    print(f"PolyStep: {opt.num_candidates} candidates per step (one batch for the black box)")
    initial = float(black_box(x0[None])[0])
    for step in range(1, args.steps + 1):
        candidates = opt.ask()  # (N, dim)
        costs = black_box(candidates)  # (N,): any black box, any device, no gradients
        opt.tell(costs)
        if step % max(1, args.steps // 6) == 0 or step == args.steps:
            current = float(black_box(opt.x[None])[0])
            print(f"step {step:4d}  cost {current:8.3f}")

    final = float(black_box(opt.x[None])[0])
    evaluations = opt.steps * opt.num_candidates
    print(
        f"cost {initial:.3f} -> {final:.3f} after {opt.steps} steps ({evaluations:,} "
        f"black-box evaluations, no gradients)"
    )
    summary = {
        "initial_cost": initial,
        "final_cost": final,
        "steps": opt.steps,
        "evaluations": evaluations,
    }
    print("summary: " + json.dumps(summary))


if __name__ == "__main__":
    main()
