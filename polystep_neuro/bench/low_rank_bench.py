"""Adaptation with low-rank probes against full weight sets, and against inference.

Every weight and bias of a random network adapted with the recipe's defaults on the float32
torch simulator (one CPU thread), once with ``Settings.low_rank_probes`` (the simulator
shares the first layer's product among all candidates) and once without, their steps taken
in turn, ``chunk`` at a time, for ``rounds`` rounds after a warm-up, beside inference (the
start network on the same minibatch, called once per candidate, so as many (set, sample)
pairs).  Rates are (set, sample) pairs per second of whole steps (ask, simulate, tell);
ratios are medians of the per-round ones.  Random labels: this measures speed, not learning
(the zoo's ``low-rank-probes`` variant measures that).  Where the fused CPU neuron update is
active (simulators.lif_kernels), both adaptations are also run with the reference torch
passes, in the same rounds.

    OMP_NUM_THREADS=1 python -m polystep_neuro.bench.low_rank_bench
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from devices.registry import open_backend  # noqa: E402
from polystep_neuro.bench.machine import describe  # noqa: E402
from polystep_neuro.bench.roofline_bench import REFERENCE_UPDATE  # noqa: E402
from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from polystep_neuro.run.controller import Adapter  # noqa: E402
from polystep_neuro.run.data import SpikeDataset  # noqa: E402
from polystep_neuro.run.optimizers import Settings  # noqa: E402
from simulators import lif_kernels  # noqa: E402

CASES = ((64, 512, 10), (784, 128, 10))


def measure(
    sizes: tuple[int, ...], steps: int = 25, batch: int = 128, rounds: int = 4, chunk: int = 2
) -> dict:
    """Pairs / s of both adaptations and of inference on one network (see module doc)."""
    spec = NetworkSpec.random(list(sizes), steps, seed=0, du=1.0, dv=0.1, writable="all")
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4 * batch, steps, sizes[0], generator=gen) < 0.3).numpy().astype("uint8")
    y = torch.randint(0, sizes[-1], (4 * batch,), generator=gen).numpy()
    train = SpikeDataset(x, y, batch, seed=0)
    backend = open_backend("torch-sim", device="cpu")
    backend.load(spec)
    kinds = [("full sets", False), ("low-rank probes", True)]
    if lif_kernels.active():  # the same steps with the reference neuron update, beside
        kinds += [(name + REFERENCE_UPDATE, low_rank) for name, low_rank in kinds]
    adapters = {
        name: Adapter.build(
            backend,
            train,
            steps=rounds * chunk + chunk,
            settings=Settings(low_rank_probes=low_rank),
            eval_every=0,
            progress=False,
        )  # fmt: skip
        for name, low_rank in kinds
    }
    sets = adapters["full sets"].optimizer.num_candidates + 1  # the start rides along
    inputs = train.batch(0)[0]

    def inference() -> None:
        for _ in range(sets):
            backend.evaluate({}, inputs)

    seconds: dict[str, list[float]] = {name: [] for name in (*adapters, "inference")}
    for r in range(rounds + 1):
        for name, adapter in adapters.items():
            reference = name.endswith(REFERENCE_UPDATE)
            start = time.perf_counter()
            with lif_kernels.reference_updates() if reference else contextlib.nullcontext():
                adapter.run((r + 1) * chunk)
            if r:
                seconds[name].append((time.perf_counter() - start) / chunk)
        start = time.perf_counter()
        inference()
        if r:
            seconds["inference"].append(time.perf_counter() - start)
    backend.close()
    pairs = sets * batch
    out: dict = {"sizes": sizes, "sets": sets, "batch": batch, "steps": steps}
    for name, times in seconds.items():
        out[name] = {
            "pairs_per_s": pairs / statistics.median(times),
            "over_full": statistics.median(
                f / t for f, t in zip(seconds["full sets"], times, strict=True)
            ),
            "of_inference": statistics.median(
                i / t for i, t in zip(seconds["inference"], times, strict=True)
            ),
        }
    return out


def table(results: list[dict]) -> list[str]:
    lines = [
        "| network, T, B, V | evaluation | (set, sample) pairs / s | vs full sets "
        "| of inference's rate |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        where = f"{'-'.join(map(str, r['sizes']))}, T={r['steps']}, B={r['batch']}, V={r['sets']}"
        names = ["inference", "full sets", "low-rank probes"]
        names += [n + REFERENCE_UPDATE for n in names[1:] if n + REFERENCE_UPDATE in r]
        for name in names:
            m = r[name]
            lines.append(
                f"| {where} | {name} | {m['pairs_per_s']:,.0f} | {m['over_full']:.2f}x "
                f"| {m['of_inference']:.0%} |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness check)")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = ((16, 24, 4),) if args.quick else CASES
    steps, batch = (6, 8) if args.quick else (25, 128)
    print(describe(gpu=False))
    results = [measure(c, steps, batch, rounds=1 if args.quick else args.rounds) for c in cases]
    print("\n".join(table(results)))
    print(
        "inference: the start network on the same minibatch, called once per set (as many "
        "pairs); pairs / s of whole steps (ask, simulate, tell)"
    )


if __name__ == "__main__":
    main()
