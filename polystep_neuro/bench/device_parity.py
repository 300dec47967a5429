"""torch-sim on a device against torch-sim on the CPU: the same spike counts?

    python -m polystep_neuro.bench.device_parity [--device cuda] [--quick]

loihi-fixed is integer arithmetic, so its counts must be identical on every device; float32
may differ where a membrane lands within rounding of its threshold (GEMMs sum in another
order), so its fraction of identical count entries and largest difference are reported.
Shapes include the demo's 64-512-10 network (T=25) with the readout writable and with every
weight writable, a network with current memory, a three-layer one, and one whose fixed-point
currents pass 2**23 (the float64 path with its wraps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.device_parity`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.bench.cases import Case, perturbed_sets  # noqa: E402
from polystep_neuro.bench.device_args import device_bench_args  # noqa: E402
from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from simulators.torch_lif import TorchLIF  # noqa: E402

PRECISIONS = ("float32", "loihi-fixed")


@dataclass(frozen=True)
class ParityCase(Case):
    du: float = 1.0
    weight_gain: float = 1.0
    wrapping: bool = False  # fixed point: scale set by hand so the currents pass 2**23


DEMO = (64, 512, 10)
CASES = (
    ParityCase("demo, readout writable", DEMO, 25, 128, 64, ("fc1.weight", "lif1.v_bias")),
    ParityCase("demo, all weights writable", DEMO, 25, 128, 64, ("fc0.weight", "fc1.weight")),
    ParityCase("current memory (du 0.3), all parameters", (20, 30, 5), 12, 16, 8, ("all",), du=0.3),
    ParityCase(
        "three layers, all weights",
        (64, 256, 128, 10),
        20,
        64,
        16,
        ("fc0.weight", "fc1.weight", "fc2.weight"),
    ),
    ParityCase(
        "fixed point: currents past 2**23 (float64 path)",
        (40, 20, 6),
        10,
        8,
        6,
        ("fc0.weight",),
        wrapping=True,
    ),
)
QUICK_CASES = (
    ParityCase("demo-like, readout writable", (16, 32, 10), 8, 8, 4, ("fc1.weight", "lif1.v_bias")),
    ParityCase(
        "demo-like, all weights writable", (16, 32, 10), 8, 8, 4, ("fc0.weight", "fc1.weight")
    ),
    replace(CASES[-1], sets=3),
)


def build(
    case: ParityCase, seed: int = 0
) -> tuple[NetworkSpec, dict[str, torch.Tensor], torch.Tensor]:
    """The network (Lava semantics), V perturbed parameter sets and input spikes, on CPU."""
    writable: tuple[str, ...] | str = "all" if case.writable == ("all",) else case.writable
    spec = NetworkSpec.random(
        list(case.sizes), case.steps, seed=seed, du=case.du, dv=0.1, weight_gain=case.weight_gain
    )
    if case.wrapping:  # saturated first-layer weights at the largest exponent (see tests)
        from simulators import fixed_point as fp

        spec = fp.calibrate(spec)
        first = spec.layers[0]
        first.weight = np.full_like(first.weight, 3.0)
        first.fixed_scale, first.fixed_weight_exp = fp.WEIGHT_MAX / 3.0 * 2**7, 7
    spec = spec.with_writable(writable)
    gen = torch.Generator().manual_seed(seed)
    params = perturbed_sets(spec.parameters(), spec.writable, case.sets, 0.1, gen)
    density = 0.9 if case.wrapping else 0.3
    x = (torch.rand(case.batch, case.steps, case.sizes[0], generator=gen) < density).float()
    return spec, params, x


def compare(case: ParityCase, precision: str, device: torch.device) -> dict:
    """Counts on ``device`` against counts on the CPU for one case and precision."""
    spec, params, x = build(case)
    if precision == "loihi-fixed" and any(n.endswith((".du", ".bias")) for n in params):
        params = {n: v for n, v in params.items() if not n.endswith((".du", ".bias"))}
        spec = spec.with_writable(tuple(params))
    cpu = TorchLIF(spec, precision, "cpu").evaluate(params, x).counts
    dev_params = {n: v.to(device) for n, v in params.items()}
    dev = TorchLIF(spec, precision, device).evaluate(dev_params, x.to(device)).counts.cpu()
    same = cpu == dev
    return {
        "case": case,
        "precision": precision,
        "entries": same.numel(),
        "identical": float(same.float().mean()),
        "max_diff": int((cpu - dev).abs().max()),
        "mean_count": float(cpu.float().mean()),
        "ok": bool(same.all()) if precision == "loihi-fixed" else True,
    }


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    dev = torch.device(device)
    return [
        compare(case, precision, dev)
        for case in (QUICK_CASES if quick else CASES)
        for precision in PRECISIONS
    ]


def table(results: list[dict], device: str) -> list[str]:
    lines = [
        f"| case | network, T, B, V | precision | count entries | identical CPU vs {device} "
        "| largest count difference | mean count | verdict |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        c: ParityCase = r["case"]
        if r["precision"] == "loihi-fixed":
            verdict = "bit-identical" if r["ok"] else "MISMATCH (must be identical)"
        else:
            verdict = "reported (float32 rounding)"
        lines.append(
            f"| {c.label} | {c.where} | {r['precision']} | {r['entries']:,} "
            f"| {r['identical']:.4%} | {r['max_diff']} | {r['mean_count']:.2f} | {verdict} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = device_bench_args(__doc__, argv)
    results = run(args.device, args.quick)
    print("\n".join(table(results, args.device)))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
