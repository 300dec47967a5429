"""torch-sim against a plain torch.mm of the same FLOPs: how near its matmul roofline it runs.

    python -m polystep_neuro.bench.roofline_bench [--device cpu|cuda] [--quick] [--repeats 5]
        [--threads 1]

Each case is a network shape, the parameters its V sets vary, and both precisions.  The
simulator's work is one GEMM per layer over all T steps for every distinct parameter set
(a layer whose input and weights all sets share is computed once), so its FLOPs are
``2 * T * B * sum(n_in * n_out * groups)``.  The yardstick is one square float32
``torch.mm`` doing the same FLOPs (same dtype and thread count as the simulator's GEMMs,
TF32 off), timed in the same run: rounds alternate [mm, float32 sim, fixed-point sim] and
every ratio is the median of the per-round ratios, so drift on a shared machine cancels.
Where the fixed-point sim uses int8 GEMMs (a CPU whose torch sums int8 exactly), its float
GEMM reference path is timed in the same rounds as a third row: the yardstick stays the
float32 mm, so an int8 row can pass 100 %.  On CPU with the fused neuron update
(simulators.lif_kernels) both precisions are also timed with the reference torch passes
(rows "..., reference update"), in the same rounds.
"roofline fraction" = mm time / simulator time: 1.0 would mean the simulator ran as fast as
a single well-shaped GEMM of its size, neuron updates and all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.roofline_bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.bench import machine  # noqa: E402
from polystep_neuro.bench.cases import Case, perturbed_sets  # noqa: E402
from polystep_neuro.core.network import NetworkSpec, split_param_name  # noqa: E402
from simulators import lif_kernels  # noqa: E402
from simulators.fixed_point import calibrate_layer  # noqa: E402
from simulators.torch_lif import TorchLIF  # noqa: E402

PRECISIONS = ("float32", "loihi-fixed")
FIXED_FLOAT_GEMM = "loihi-fixed, float GEMMs"  # the reference path beside int8 GEMMs
REFERENCE_UPDATE = ", reference update"  # the torch passes beside the fused CPU update


def all_weights(sizes: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"fc{i}.weight" for i in range(len(sizes) - 1))


DEMO = (64, 512, 10)
CASES = (
    Case("all weights", DEMO, 25, 128, 128, all_weights(DEMO)),
    Case("readout (fc1.weight, lif1.v_bias)", DEMO, 25, 128, 128, ("fc1.weight", "lif1.v_bias")),
    Case("all weights", (64, 128, 10), 25, 128, 64, all_weights((64, 128, 10))),
    Case("all weights", (64, 256, 256, 10), 25, 128, 64, all_weights((64, 256, 256, 10))),
)
# A GPU needs many more sets to fill it: the same shapes at V=1024, and a wider network.
GPU_CASES = (
    CASES[0],
    replace(CASES[0], sets=1024),
    replace(CASES[1], sets=1024),
    Case("all weights", (256, 1024, 256, 10), 25, 128, 256, all_weights((256, 1024, 256, 10))),
)
QUICK_CASES = (
    Case("all weights", (32, 64, 10), 10, 16, 8, all_weights((32, 64, 10))),
    Case("readout (fc1.weight)", (32, 64, 10), 10, 16, 8, ("fc1.weight",)),
)


def gemm_flops(case: Case) -> float:
    """FLOPs of the simulator's GEMMs when all V sets differ in every varied tensor."""
    varied_layers = [split_param_name(name) for name in case.writable]
    first = min(index for index, _ in varied_layers)
    weights = {index for index, attr in varied_layers if attr == "weight"}
    total = 0
    for i, (n_in, n_out) in enumerate(zip(case.sizes[:-1], case.sizes[1:], strict=True)):
        groups = case.sets if i > first or i in weights else 1
        total += n_in * n_out * groups
    return 2.0 * case.steps * case.batch * total


def build(case: Case, device: torch.device, seed: int = 0):
    """The demo's kind of network (Lava semantics), V perturbed parameter sets, input spikes."""
    spec = NetworkSpec.random(
        list(case.sizes),
        case.steps,
        seed=seed,
        du=1.0,
        dv=0.1,
        vth=1.0,
        weight_gain=1.0,
        writable=case.writable,
    )
    gen = torch.Generator().manual_seed(seed)
    drawn = perturbed_sets(spec.parameters(), case.writable, case.sets, 0.05, gen)
    params = {name: value.to(device) for name, value in drawn.items()}
    x = (torch.rand(case.batch, case.steps, case.sizes[0], generator=gen) < 0.3).float()
    return spec, params, x.to(device)


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    return timed


def square_mm(flops: float, device: torch.device) -> Callable[[], object]:
    """One float32 n x n x n product with ``2 n**3`` close to ``flops``."""
    n = max(16, round((flops / 2.0) ** (1.0 / 3.0)))
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    scale = flops / (2.0 * n**3)  # the few-percent rounding of n, corrected in the rate

    def run() -> object:
        return torch.mm(a, b, out=out)

    run.flops_scale = scale  # type: ignore[attr-defined]
    return run


def measure(case: Case, device: torch.device, repeats: int = 5) -> dict:
    """Pairs/s and GFLOP/s of both precisions and of the mm yardstick, and their ratios."""
    spec, params, x = build(case, device)
    sims = {p: TorchLIF(spec, p, device) for p in PRECISIONS}
    if sims["loihi-fixed"].int8_gemm:
        sims[FIXED_FLOAT_GEMM] = TorchLIF(spec, "loihi-fixed", device, int8_gemm=False)
    runs = {p: (lambda s=sim: s.evaluate(params, x).counts) for p, sim in sims.items()}
    if device.type == "cpu" and lif_kernels.active():  # the fused update against the passes
        for p in PRECISIONS:
            runs[f"{p}{REFERENCE_UPDATE}"] = _with_reference_updates(runs[p])
    flops = gemm_flops(case)
    mm = square_mm(flops, device)
    timed = _timer(device)
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on both sides
    try:
        for fn in (mm, *runs.values()):  # warm-up: workspaces, kernels, CUDA context
            fn()
        seconds: dict[str, list[float]] = {"mm": [], **{p: [] for p in runs}}
        for _ in range(repeats):
            seconds["mm"].append(timed(mm) * mm.flops_scale)  # type: ignore[attr-defined]
            for p, fn in runs.items():
                seconds[p].append(timed(fn))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    pairs = case.sets * case.batch
    out: dict = {"case": case, "flops": flops, "device": device.type, "variants": list(runs)}
    out["mm_gflops"] = flops / statistics.median(seconds["mm"]) / 1e9
    for p in runs:
        t = statistics.median(seconds[p])
        out[p] = {
            "seconds": t,
            "pairs_per_s": pairs / t,
            "gflops": flops / t / 1e9,
            "roofline": statistics.median(
                m / s for m, s in zip(seconds["mm"], seconds[p], strict=True)
            ),
            "over_float": statistics.median(
                f / s for f, s in zip(seconds[p], seconds["float32"], strict=True)
            ),
        }
    out["fixed_over_float"] = out["loihi-fixed"]["over_float"]
    counts = {p: runs[p]() for p in runs}
    fixed = [c for p, c in counts.items() if not p.startswith("float32")]
    if not all(torch.equal(c, counts["loihi-fixed"]) for c in fixed):
        raise RuntimeError("the fixed-point paths disagree: benchmark invalid")
    if f"float32{REFERENCE_UPDATE}" in counts and not torch.equal(
        counts[f"float32{REFERENCE_UPDATE}"], counts["float32"]
    ):
        raise RuntimeError("the fused float32 update disagrees with the reference: invalid")
    out["mean_output_spikes"] = float(counts["float32"].float().mean())
    return out


def _with_reference_updates(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with lif_kernels.reference_updates():
            return fn()

    return run


def run(device: str = "cpu", quick: bool = False, repeats: int = 5) -> list[dict]:
    dev = torch.device(device)
    return [measure(case, dev, repeats) for case in (QUICK_CASES if quick else CASES)]


LOW_RANK_CASES = ((64, 512, 10), (784, 128, 10))


def measure_low_rank(
    sizes: tuple[int, ...],
    sets: int = 128,
    rank: int = 4,
    repeats: int = 5,
    batch: int = 128,
    precision: str = "float32",
) -> dict:
    """All-weights probes, one CPU: (set, sample) pairs / s of V materialised weight sets,
    of the same sets with the first layer as base + rank-r factors
    (``TorchLIF.evaluate_low_rank``), and of inference (the loaded network on the B
    samples V times: as many pairs, in blocks the simulator sizes as it does sets), in
    alternating rounds; ratios are medians of per-round ones.  loihi-fixed: the factors
    are integers in -1..1 on the device's weight grid, the first layer calibrated with
    room for them (its largest weight at about 90 % of the 8-bit range)."""
    steps = 25
    spec = NetworkSpec.random(
        list(sizes), steps, seed=0, du=1.0, dv=0.1, vth=1.0, weight_gain=1.0, writable="all"
    )
    gen = torch.Generator().manual_seed(0)
    n_in, n_out = sizes[0], sizes[1]
    if precision == "float32":
        u = 0.05 * torch.randn(sets, n_out, rank, generator=gen)
        vt = torch.randn(sets, rank, n_in, generator=gen) / rank**0.5
    else:
        first = spec.layers[0]
        scale, exp = calibrate_layer(replace(first, weight=first.weight * np.float32(1.12)))
        spec.layers[0] = replace(first, fixed_scale=scale, fixed_weight_exp=exp)
        u = torch.randint(-1, 2, (sets, n_out, rank), generator=gen).float()
        vt = torch.randint(-1, 2, (sets, rank, n_in), generator=gen).float()
    base = spec.parameters()
    others = {
        f"fc{i}.weight": torch.as_tensor(base[f"fc{i}.weight"])[None]
        + 0.05 * torch.randn(sets, sizes[i + 1], sizes[i], generator=gen)
        for i in range(1, len(sizes) - 1)
    }
    x = (torch.rand(batch, steps, n_in, generator=gen) < 0.3).float()
    sim = TorchLIF(spec, precision, "cpu")
    summed = sim.low_rank_weights(u, vt)
    runs = {
        "materialised": lambda: sim.evaluate({"fc0.weight": summed, **others}, x).counts,
        "low-rank": lambda: sim.evaluate_low_rank(others, u, vt, x).counts,
        "inference": lambda: [sim.evaluate(None, x).counts for _ in range(sets)],
    }
    timed = _timer(torch.device("cpu"))
    for fn in runs.values():
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            seconds[k].append(timed(fn))
    agree = float((runs["materialised"]() == runs["low-rank"]()).float().mean())
    pairs = sets * batch
    out: dict = {
        "sizes": sizes, "sets": sets, "rank": rank, "batch": batch, "agree": agree,
        "precision": precision,
    }  # fmt: skip
    for k in runs:
        out[k] = {
            "pairs_per_s": pairs / statistics.median(seconds[k]),
            "over_inference": statistics.median(
                i / s for i, s in zip(seconds["inference"], seconds[k], strict=True)
            ),
            "speedup": statistics.median(
                m / s for m, s in zip(seconds["materialised"], seconds[k], strict=True)
            ),
        }
    return out


def low_rank_table(results: list[dict]) -> list[str]:
    lines = [
        "| network, V, rank | evaluation | (set, sample) pairs / s | vs materialised "
        "| of inference's rate |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        where = (
            f"{'-'.join(map(str, r['sizes']))}, V={r['sets']}, r={r['rank']}, "
            f"{r.get('precision', 'float32')}"
        )
        for k in ("inference", "materialised", "low-rank"):
            m = r[k]
            lines.append(
                f"| {where} | {k} | {m['pairs_per_s']:,.0f} | {m['speedup']:.2f}x "
                f"| {m['over_inference']:.0%} |"
            )
    lines += [
        "",
        "spike counts equal to the materialised sets' (float32 rounding may differ; "
        "loihi-fixed must agree on all): " + ", ".join(f"{r['agree']:.2%}" for r in results),
    ]
    return lines


def table(results: list[dict]) -> list[str]:
    lines = [
        "| network, T, B, V | sets vary | precision | (set, sample) pairs / s | GEMM GFLOP/s "
        "| mm GFLOP/s | roofline fraction | time / float32's |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c: Case = r["case"]
        for p in r.get("variants", PRECISIONS):
            m = r[p]
            ratio = f"{m['over_float']:.2f}x" if p != "float32" else ""
            lines.append(
                f"| {c.where} | {c.label} | {p} | {m['pairs_per_s']:,.0f} | {m['gflops']:.1f} "
                f"| {r['mm_gflops']:.1f} | {m['roofline']:.0%} | {ratio} |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness check)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--low-rank", action="store_true", help="also the low-rank first-layer prototype (CPU)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.device, args.quick, args.repeats)
    print(f"torch {torch.__version__}, simulator on {args.device}; {machine.describe()}")
    print("\n".join(table(results)))
    if args.low_rank:
        cases = ((32, 64, 10),) if args.quick else LOW_RANK_CASES
        sets = 8 if args.quick else 128
        rows = [
            measure_low_rank(c, sets, repeats=args.repeats, precision=p)
            for c in cases
            for p in PRECISIONS
        ]
        print()
        print("\n".join(low_rank_table(rows)))


if __name__ == "__main__":
    main()
