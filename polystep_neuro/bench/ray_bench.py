"""The ray backend side by side with itself and with the in-process backend, in one run.

    python -m polystep_neuro.bench.ray_bench [--quick]

* throughput: one population (V parameter sets, every weight varied) evaluated by the
  in-process torch-sim-fixed, by a ray backend with 1 local worker and by one with 2,
  the three taking turns, so machine noise hits all alike;
* per-call overhead: a tiny evaluate (V=2, B=1) on the same three, taking turns.

The local Ray is started with one logical CPU per actor (3), whatever the cores: each
actor runs its simulator with one thread, as the in-process backend does here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Keep the benchmark's local Ray on loopback (Ray otherwise listens on every interface);
# Ray reads this when it is imported, which happens below, through the ray backend.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray starts its workers at nice 15: on a shared machine the actors would then lose the
# CPU to every other process, the in-process backend included.  Same priority for all.
os.environ.setdefault("RAY_worker_niceness", "0")

FULL = dict(sizes=[64, 256, 10], steps=25, batch=64, vertices=128, repeats=5, calls=200)
QUICK = dict(sizes=[16, 32, 4], steps=10, batch=8, vertices=8, repeats=2, calls=20)
TINY = dict(sizes=[8, 12, 3], steps=10, batch=1, vertices=2)
WAYS = ("in-process torch-sim-fixed", "ray, 1 worker", "ray, 2 workers")


def _population(
    sizes: list[int], steps: int, batch: int, vertices: int, seed: int = 0
) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    from polystep_neuro.core.network import NetworkSpec

    spec = NetworkSpec.random(sizes, steps, seed=seed, writable="all")
    rng = np.random.default_rng(seed)
    weights = [f"fc{i}.weight" for i in range(len(sizes) - 1)]
    params = {
        name: (spec.parameters()[name] * rng.uniform(0.5, 1.5, (vertices, 1, 1))).astype(np.float32)
        for name in weights
    }
    inputs = (rng.random((batch, steps, sizes[0])) < 0.3).astype(np.float32)
    return spec, params, inputs


def _turns(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each way, the ways taking turns, after one uncounted call each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rnd in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if rnd:
                times[name].append(time.perf_counter() - start)
    return times


def measure(quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from devices.registry import open_backend
    from devices.torch_sim import TorchSimBackend
    from simulators import fixed_point

    cfg = QUICK if quick else FULL
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    spec, params, inputs = _population(cfg["sizes"], cfg["steps"], cfg["batch"], cfg["vertices"])
    spec = fixed_point.calibrate(spec)
    progress("ray: starting a local Ray and 3 actors")
    one = open_backend("ray:torch-sim-fixed", workers=1, num_cpus=3)
    two = open_backend("ray:torch-sim-fixed", workers=2)  # the same local Ray
    local = TorchSimBackend("loihi-fixed", "cpu")
    backends = dict(zip(WAYS, (local, one, two), strict=True))
    try:
        for backend in backends.values():
            backend.load(spec)
        counts = {name: np.asarray(b.evaluate(params, inputs)) for name, b in backends.items()}
        same = all(np.array_equal(c, counts[WAYS[0]]) for c in counts.values())
        progress(f"ray: throughput, V={cfg['vertices']}, {cfg['repeats']} rounds")
        throughput = _turns(
            {name: (lambda b=b: b.evaluate(params, inputs)) for name, b in backends.items()},
            cfg["repeats"],
        )
        tiny_spec, tiny_params, tiny_inputs = _population(**TINY, seed=1)
        tiny_spec = fixed_point.calibrate(tiny_spec)
        for backend in backends.values():
            backend.load(tiny_spec)
        progress(f"ray: per-call overhead, {cfg['calls']} tiny calls per way")
        overhead = _turns(
            {
                name: (lambda b=b: b.evaluate(tiny_params, tiny_inputs))
                for name, b in backends.items()
            },
            cfg["calls"],
        )
    finally:
        for backend in backends.values():
            backend.close()
    return {
        **cfg,
        "same_counts": same,
        "throughput": throughput,
        "overhead": overhead,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
        "load_before": load,
    }


def tables(result: dict[str, Any]) -> list[str]:
    pairs = result["vertices"] * result["batch"]
    med = {name: statistics.median(t) for name, t in result["throughput"].items()}
    lines = [
        "| way | median s per evaluate | (vertex, sample) pairs/s | vs 1 worker |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in med.items():
        lines.append(
            f"| {name} | {seconds:.3f} | {pairs / seconds:,.0f} | {med[WAYS[1]] / seconds:.2f}x |"
        )
    tiny = {name: statistics.median(t) for name, t in result["overhead"].items()}
    lines += [
        "",
        f"Tiny evaluate (V={TINY['vertices']}, B={TINY['batch']}, "
        f"{'-'.join(map(str, TINY['sizes']))}, T={TINY['steps']}), {result['calls']} calls "
        "per way:",
        "",
        "| way | median ms per call | min ms | vs in-process (median) |",
        "|---|---:|---:|---:|",
    ]
    for name, values in result["overhead"].items():
        lines.append(
            f"| {name} | {tiny[name] * 1e3:.2f} | {min(values) * 1e3:.2f} | "
            f"{tiny[name] / tiny[WAYS[0]]:.1f}x |"
        )
    extra_ms = (tiny[WAYS[1]] - tiny[WAYS[0]]) * 1e3
    lines += [
        "",
        f"2 workers / 1 worker throughput: {med[WAYS[1]] / med[WAYS[2]]:.2f}x",
        f"Ray / in-process per-call time (median): {tiny[WAYS[1]] / tiny[WAYS[0]]:.1f}x "
        f"({extra_ms:+.2f} ms per call, 1 worker)",
        "counts identical across in-process, 1 and 2 Ray workers: "
        + ("yes" if result["same_counts"] else "NO"),
    ]
    return lines


def describe(result: dict[str, Any]) -> str:
    return (
        f"torch-sim-fixed, network {'-'.join(map(str, result['sizes']))}, T={result['steps']}, "
        f"B={result['batch']}, V={result['vertices']} sets with every weight varied "
        f"(`polystep_neuro/bench/ray_bench.py`).  Local Ray with 3 logical CPUs on "
        f"{result['cores']} usable "
        "cores, one CPU and one torch thread per actor, actors at the host's priority "
        "(`RAY_worker_niceness=0`; Ray's default is nice 15); the in-process backend also uses "
        f"one thread.  Throughput: median of {result['repeats']} rounds, the three ways taking "
        "turns after one uncounted call each.  Per-call overhead: the same three on a tiny "
        "evaluate, taking turns.  1-minute load average when the section started: "
        f"{result['load_before']:.2f}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    result = measure(args.quick)
    print(describe(result), "\n")
    print("\n".join(tables(result)))


if __name__ == "__main__":
    main()
