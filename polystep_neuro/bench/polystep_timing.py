"""PolyStep's own cost per step (ask + tell) on a device, at a few problem sizes.

    python -m polystep_neuro.bench.polystep_timing [--device cuda] [--quick]

Built as the adaptation recipe builds it (``PolyStep.for_units`` with the default
``Settings``, the rank per problem): per-tensor random subspaces, the vector on the device.
The costs told are a cheap function of the candidates computed on the device, so the time
is the optimiser's (random rotations, candidate matrix, weights, update, subspace lift),
not a network's.  Median of timed steps after
warm-up steps, synchronised.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.polystep_timing`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.bench.device_args import device_bench_args  # noqa: E402
from polystep_neuro.optim import PolyStep  # noqa: E402
from polystep_neuro.run.optimizers import Settings  # noqa: E402


@dataclass(frozen=True)
class Size:
    label: str
    tensors: tuple[int, ...]  # parameters per tensor
    rank: int

    @property
    def params(self) -> int:
        return sum(self.tensors)


SIZES = (
    Size("demo pretrain: fc1.weight", (5120,), 128),
    Size("demo adapt: fc1.weight + lif1.v_bias", (5120, 10), 64),
    Size("demo, all weights", (32768, 5120), 128),
    Size("1M parameters", (1_000_000,), 256),
)
QUICK_SIZES = (
    Size("demo adapt: fc1.weight + lif1.v_bias", (5120, 10), 64),
    Size("small", (300, 10), 8),
)


def time_steps(size: Size, device: torch.device, steps: int = 20, warmup: int = 3) -> dict:
    x0 = torch.randn(size.params, generator=torch.Generator().manual_seed(0)).to(device)
    settings = Settings(rank=size.rank)
    opt = PolyStep.for_units(
        x0, sizes=size.tensors, total_steps=warmup + steps, seed=0,
        **settings.options_for(PolyStep, size.tensors),
    )  # fmt: skip
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        cand = opt.ask()
        opt.tell(cand.square().mean(dim=1))
        sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - t0)
    return {
        "size": size,
        "candidates": opt.num_candidates,
        "steps": steps,
        "ms": 1e3 * statistics.median(seconds),
        "ms_max": 1e3 * max(seconds),
        "device": device.type,
    }


def run(device: str = "cuda", quick: bool = False, steps: int = 20) -> list[dict]:
    dev = torch.device(device)
    return [time_steps(s, dev, steps) for s in (QUICK_SIZES if quick else SIZES)]


def table(results: list[dict]) -> list[str]:
    lines = [
        "| problem | parameters | subspace rank per tensor | candidates per step "
        "| ask + tell, ms (median) | slowest step, ms | steps timed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s: Size = r["size"]
        lines.append(
            f"| {s.label} | {s.params:,} | {s.rank} | {r['candidates']:,} | {r['ms']:.2f} "
            f"| {r['ms_max']:.2f} | {r['steps']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = device_bench_args(__doc__, argv)
    print("\n".join(table(run(args.device, args.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
