"""torch-sim vs a per-vertex snnTorch loop: evaluated (vertex, sample) pairs per second.

    python bench/sim_bench.py [--V 64] [--B 128] [--T 25] [--sizes 64 128 10] [--repeats 3]

Both sides evaluate the same V weight sets (every weight varies) on the same B input
samples over T steps and must produce identical spike counts; the ratio is measured side by
side in one run.  On CUDA it also reports the simulator's achieved fraction of the GPU's
float32 matmul peak, measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from polystep_neuro.network import NetworkSpec
from simulators.torch_lif import TorchLIF


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


def _bench_device(device, spec, names, weights, x, args) -> None:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sim = TorchLIF(spec, "float32", device)
    params = {n: w.to(device) for n, w in zip(names, weights, strict=True)}
    xd = x.to(device)
    dev_weights = [w.to(device) for w in weights]
    t_sim, counts_sim = _best_of(args.repeats, lambda: sim.run(params, xd).counts, sync)
    t_ref, counts_ref = _best_of(1, lambda: _snntorch_loop(spec, dev_weights, xd), sync)
    pairs = args.V * args.B
    print(
        f"| {device.type} | per-vertex snnTorch loop | {t_ref:.3f} | {pairs / t_ref:,.0f} | 1.0x |"
    )
    print(
        f"| {device.type} | torch-sim (batched) | {t_sim:.3f} | {pairs / t_sim:,.0f} | "
        f"{t_ref / t_sim:.1f}x |"
    )
    if not torch.equal(counts_sim.cpu(), counts_ref.cpu()):
        raise SystemExit("counts differ between torch-sim and snnTorch: benchmark invalid")
    if device.type == "cuda":
        flops = 2 * pairs * args.T * sum(layer.n_in * layer.n_out for layer in spec.layers)
        peak = _matmul_peak(device, sync)
        print(
            f"\nCUDA ({torch.cuda.get_device_name(device)}): simulator GEMM work "
            f"{flops / t_sim / 1e12:.2f} TFLOP/s = {flops / t_sim / peak:.1%} of the "
            f"measured float32 matmul peak ({peak / 1e12:.1f} TFLOP/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--B", type=int, default=128)
    parser.add_argument("--T", type=int, default=25)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    # snnTorch semantics: delay 0, leaky neurons; all weights vary across the V sets.
    spec = NetworkSpec.random(args.sizes, args.T, seed=0, dv=0.1, delay=0, writable="all")
    for layer in spec.layers:
        layer.neuron = "leaky"
    spec = spec.validate()
    names = [f"fc{i}.weight" for i in range(len(spec.layers))]
    weights = [
        torch.as_tensor(layer.weight)[None] + 0.2 * torch.randn(args.V, *layer.weight.shape)
        for layer in spec.layers
    ]
    x = (torch.rand(args.B, args.T, args.sizes[0]) < 0.3).float()
    print(
        f"network {'-'.join(map(str, args.sizes))}, V={args.V}, B={args.B}, T={args.T}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print()
    print("| device | implementation | seconds | (vertex, sample) pairs / s | speed-up |")
    print("|---|---|---|---|---|")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        _bench_device(device, spec, names, weights, x, args)
    print("\nidentical spike counts on every device: yes")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
