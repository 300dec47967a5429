"""torch-sim vs a per-vertex snnTorch loop: evaluated (vertex, sample) pairs per second.

    python -m polystep_neuro.bench.sim_bench [--V 64] [--B 128] [--T 25] [--sizes 64 128 10]
        [--repeats 3]
                              [--ref-vertices N]

Both sides evaluate the same V weight sets (every weight varies) on the same B input
samples over T steps and must produce identical spike counts; the ratio is measured side by
side in one run.  On CUDA it also reports the simulator's achieved fraction of the GPU's
float32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.sim_bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.bench import machine  # noqa: E402
from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from simulators.torch_lif import TorchLIF  # noqa: E402


def _snntorch_loop(spec: NetworkSpec, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """What a user without a batched simulator writes: one snnTorch forward per vertex."""
    import snntorch as snn

    fcs = [torch.nn.Linear(layer.n_in, layer.n_out, bias=False) for layer in spec.layers]
    lifs = [
        snn.Leaky(
            beta=1.0 - layer.dv, threshold=layer.vth, reset_mechanism="zero", reset_delay=False
        )
        for layer in spec.layers
    ]
    for fc in fcs:
        fc.to(x.device)
    counts = []
    with torch.no_grad():
        for v in range(weights[0].shape[0]):
            for fc, w in zip(fcs, weights, strict=True):
                fc.weight.copy_(w[v])
            mems = [lif.init_leaky() for lif in lifs]
            total = 0
            for t in range(x.shape[1]):
                h = x[:, t]
                for i, (fc, lif) in enumerate(zip(fcs, lifs, strict=True)):
                    h, mems[i] = lif(fc(h), mems[i])
                total = total + h
            counts.append(total)
    return torch.stack(counts).to(torch.int32)


def _best_of(repeats: int, fn, sync) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _matmul_peak(device: torch.device, sync) -> float:
    """Achieved float32 GEMM FLOP/s on a large square product (TF32 off, like the sim)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    secs, _ = _best_of(5, lambda: a @ b, sync)
    return 2 * n**3 / secs


def bench_device(device: torch.device, spec, names, weights, x, repeats: int, ref_vertices: int):
    """Time torch-sim on all V sets and the snnTorch loop on the first ``ref_vertices``.

    Returns a dict of seconds and (vertex, sample) pairs per second for both sides (the
    loop's rate from its subset: its cost is linear in the number of vertices), the speed-up,
    whether the counts agree, and on CUDA the fraction of the measured matmul peak.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sim = TorchLIF(spec, "float32", device)
    params = {n: w.to(device) for n, w in zip(names, weights, strict=True)}
    xd = x.to(device)
    num_sets, batch = weights[0].shape[0], x.shape[0]
    ref = min(ref_vertices, num_sets)
    dev_weights = [w[:ref].to(device) for w in weights]
    sim_run = lambda: sim.evaluate(params, xd).counts  # noqa: E731
    sim_run()  # warm-up (workspace allocation, CUDA context)
    t_sim, counts_sim = _best_of(repeats, sim_run, sync)
    t_ref, counts_ref = _best_of(1, lambda: _snntorch_loop(spec, dev_weights, xd), sync)
    out = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "sim_seconds": t_sim,
        "sim_pairs_per_s": num_sets * batch / t_sim,
        "ref_seconds": t_ref,
        "ref_vertices": ref,
        "ref_pairs_per_s": ref * batch / t_ref,
        "same_counts": torch.equal(counts_sim[:ref].cpu(), counts_ref.cpu()),
    }
    out["speedup"] = out["sim_pairs_per_s"] / out["ref_pairs_per_s"]
    if device.type == "cuda":
        steps = x.shape[1]
        flops = 2 * num_sets * batch * steps * sum(ly.n_in * ly.n_out for ly in spec.layers)
        out["sim_tflops"] = flops / t_sim / 1e12
        out["peak_tflops"] = _matmul_peak(device, sync) / 1e12
    return out


def run(
    V: int = 64,
    B: int = 128,
    T: int = 25,
    sizes: tuple[int, ...] | list[int] = (64, 128, 10),
    repeats: int = 3,
    ref_vertices: int | None = None,
    devices: list[torch.device] | None = None,
) -> dict:
    """The benchmark on CPU (and CUDA when present); one result dict per device."""
    torch.manual_seed(0)
    sizes = list(sizes)
    # snnTorch semantics: delay 0, leaky neurons; all weights vary across the V sets.
    spec = NetworkSpec.random(sizes, T, seed=0, dv=0.1, delay=0, writable="all")
    for layer in spec.layers:
        layer.neuron = "leaky"
    spec = spec.validate()
    names = [f"fc{i}.weight" for i in range(len(spec.layers))]
    weights = [
        torch.as_tensor(layer.weight)[None] + 0.2 * torch.randn(V, *layer.weight.shape)
        for layer in spec.layers
    ]
    x = (torch.rand(B, T, sizes[0]) < 0.3).float()
    if devices is None:
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
    ref = V if ref_vertices is None else ref_vertices
    rows = [bench_device(d, spec, names, weights, x, repeats, ref) for d in devices]
    return {
        "V": V,
        "B": B,
        "T": T,
        "sizes": sizes,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def table(result: dict) -> list[str]:
    lines = [
        "| device | implementation | vertices timed | seconds | (vertex, sample) pairs / s "
        "| speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        dev = r["device"] + (f" ({r['device_name']})" if r["device_name"] else "")
        lines.append(
            f"| {dev} | per-vertex snnTorch loop | {r['ref_vertices']} | {r['ref_seconds']:.3f} "
            f"| {r['ref_pairs_per_s']:,.0f} | 1.0x |"
        )
        lines.append(
            f"| {dev} | torch-sim (batched) | {result['V']} | {r['sim_seconds']:.3f} "
            f"| {r['sim_pairs_per_s']:,.0f} | {r['speedup']:.1f}x |"
        )
    same = all(r["same_counts"] for r in result["rows"])
    lines.append("")
    lines.append(f"identical spike counts on every device: {'yes' if same else 'NO'}")
    for r in result["rows"]:
        if "sim_tflops" in r:
            lines.append(
                f"CUDA ({r['device_name']}): simulator GEMM work {r['sim_tflops']:.2f} TFLOP/s "
                f"= {r['sim_tflops'] / r['peak_tflops']:.1%} of the measured float32 matmul "
                f"peak ({r['peak_tflops']:.1f} TFLOP/s)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--B", type=int, default=128)
    parser.add_argument("--T", type=int, default=25)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ref-vertices",
        type=int,
        help="time the snnTorch loop on only this many vertices (default: all V)",
    )
    args = parser.parse_args()
    result = run(args.V, args.B, args.T, args.sizes, args.repeats, args.ref_vertices)
    print(
        f"network {'-'.join(map(str, args.sizes))}, V={args.V}, B={args.B}, T={args.T}; "
        f"torch {torch.__version__}; {machine.describe()}"
    )
    print()
    print("\n".join(table(result)))
    if not all(r["same_counts"] for r in result["rows"]):
        raise SystemExit("counts differ between torch-sim and snnTorch: benchmark invalid")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
