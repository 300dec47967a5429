"""Peak memory: forward-only evaluation vs BPTT with a surrogate gradient, T=25 and T=400.

    python -m polystep_neuro.bench.memory_bench [--sizes 64 512 10] [--batch 128] [--steps 25 400]

Same network (64 -> 512 -> 10 leaky LIF, snnTorch semantics), same batch, same random input
spikes; three ways to run it:

- snnTorch forward-only: the snnTorch model stepped under ``torch.no_grad()`` (what a
  device does: only the current state is kept);
- torch-sim forward-only: ``simulators.torch_lif.TorchLIF`` (float32, one parameter set),
  whose layers are one GEMM per 5-step chunk of spike trains on one CPU thread (over all
  steps on several threads or CUDA);
- snnTorch BPTT: the same model with snnTorch's default arctan surrogate gradient,
  cross-entropy on the output spike counts, ``loss.backward()``.

What is measured: on CPU, the peak of the bytes held by torch's CPU allocator during the
call, above what was held before it (every allocation and free is recorded by
``torch.profiler`` with ``profile_memory=True``; the peak of the running sum is taken).
For BPTT it also reports the bytes of the tensors autograd holds for the backward pass at
the end of the forward pass (``torch.autograd.graph.saved_tensors_hooks``, distinct
storages still alive, the input spikes and weights excluded).  On CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the call.  The ratio
is BPTT's peak over snnTorch forward-only's peak, both measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.memory_bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from polystep_neuro.core.network import NetworkSpec  # noqa: E402


def _spec(sizes: list[int], steps: int) -> NetworkSpec:
    spec = NetworkSpec.random(sizes, steps, seed=0, dv=0.1, delay=0, weight_gain=2.0)
    for layer in spec.layers:
        layer.neuron = "leaky"
    return spec.validate()


def peak_cpu_bytes(fns: dict[str, Callable[[], object]]) -> dict[str, int]:
    """Peak bytes held by torch's CPU allocator while each of ``fns`` runs, above its start.

    One profiler session for all of them (starting one costs seconds): each call runs in
    a named ``record_function`` range; the allocator's events are summed in time order.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, fn in fns.items():
            with record_function(f"bench::{name}"):
                fn()
    events = list(prof.profiler.kineto_results.events())
    ranges = {
        e.name()[len("bench::") :]: (e.start_ns(), e.end_ns())
        for e in events
        if e.name().startswith("bench::")
    }
    memory = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    peaks = {}
    for name in fns:
        first, last = ranges[name]
        held, at_start, peak = 0, None, 0
        for when, nbytes in memory:
            if when > last:
                break
            if when >= first and at_start is None:
                at_start = peak = held
            held += nbytes
            if at_start is not None:
                peak = max(peak, held)
        peaks[name] = peak - (held if at_start is None else at_start)
    return peaks


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _step_model(model, x: torch.Tensor) -> torch.Tensor:
    """Output spike counts (B, N_out) of the snnTorch model, stepped from a reset state."""
    for module in model:
        if hasattr(module, "reset_mem"):
            module.reset_mem()
    total = 0
    for t in range(x.shape[1]):
        out = model(x[:, t])
        total = total + (out[0] if isinstance(out, tuple) else out)
    return total


def prepare(
    sizes: list[int], batch: int, steps: int, device: torch.device
) -> tuple[dict[str, Callable[[], object]], Callable[[], dict]]:
    """The three calls to measure for one T, and a function giving the extra figures."""
    from polystep_neuro.run.interop.snntorch import to_snntorch
    from simulators.torch_lif import TorchLIF

    spec = _spec(sizes, steps)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(batch, steps, sizes[0], generator=gen) < 0.2).float().to(device)
    labels = torch.randint(0, sizes[-1], (batch,), generator=gen).to(device)
    model = to_snntorch(spec).float().to(device)
    sim = TorchLIF(spec, "float32", device)

    def forward_snntorch() -> None:
        with torch.no_grad():
            _step_model(model, x)

    def forward_sim() -> None:
        with torch.no_grad():
            sim.counts({}, x)

    saved: list[weakref.ref] = []
    held: dict[str, int] = {}
    inputs = {t.untyped_storage().data_ptr() for t in [x, *model.parameters()]}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        return t

    def bptt() -> None:
        model.zero_grad(set_to_none=True)
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            counts = _step_model(model, x)
            loss = torch.nn.functional.cross_entropy(0.5 * counts, labels)
        # what autograd still holds for the backward pass (saved tensors of freed
        # branches are gone), distinct storages, the input spikes and weights excluded
        alive = {}
        for ref in saved:
            t = ref()
            if t is not None:
                storage = t.untyped_storage()
                alive[storage.data_ptr()] = storage.nbytes()
        held["saved"] = sum(n for ptr, n in alive.items() if ptr not in inputs)
        saved.clear()
        loss.backward()

    def extras() -> dict:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():  # the two forward-only ways compute the same counts
            same = torch.equal(_step_model(model, x).to(torch.int32), sim.counts({}, x)[0])
        return {"bptt_saved": held["saved"], "same_counts": same}

    # One unmeasured pass each first, so lazy initialisation is not counted.
    forward_snntorch(), forward_sim(), bptt()
    model.zero_grad(set_to_none=True)
    calls = {"snntorch_forward": forward_snntorch, "torchsim_forward": forward_sim, "bptt": bptt}
    return calls, extras


def run(
    sizes: list[int], batch: int, steps_list: list[int], device: torch.device, progress=None
) -> dict:
    """Peak bytes of the three ways (and BPTT's saved tensors) for every T."""
    prepared = {steps: prepare(sizes, batch, steps, device) for steps in steps_list}
    if device.type == "cuda":
        peaks = {
            (steps, name): peak_cuda_bytes(fn, device)
            for steps, (calls, _) in prepared.items()
            for name, fn in calls.items()
        }
    else:  # one profiler session for everything
        flat = {
            f"T{steps}/{name}": fn
            for steps, (calls, _) in prepared.items()
            for name, fn in calls.items()
        }
        measured = peak_cpu_bytes(flat)
        peaks = {(int(k[1:].split("/")[0]), k.split("/")[1]): v for k, v in measured.items()}
    rows: dict[int, dict] = {}
    for steps, (calls, extras) in prepared.items():
        rows[steps] = {name: peaks[(steps, name)] for name in calls} | extras()
        if progress is not None:
            progress(f"memory T={steps} on {device.type}: done")
    return {"sizes": sizes, "batch": batch, "device": device.type, "rows": rows}


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.2f}"


def table(result: dict) -> list[str]:
    what = (
        "torch.cuda.max_memory_allocated above the start"
        if result["device"] == "cuda"
        else "peak bytes held by torch's CPU allocator above the start (torch.profiler memory "
        "events)"
    )
    lines = [
        f"network {'-'.join(map(str, result['sizes']))} leaky LIF, B={result['batch']}, "
        f"device {result['device']}; measured: {what}",
        "",
        "| T | snnTorch forward-only MiB | torch-sim forward-only MiB | BPTT (surrogate) MiB "
        "| BPTT saved tensors MiB | BPTT / snnTorch forward | BPTT / torch-sim forward |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, r in result["rows"].items():
        lines.append(
            f"| {steps} | {_mb(r['snntorch_forward'])} | {_mb(r['torchsim_forward'])} "
            f"| {_mb(r['bptt'])} | {_mb(r['bptt_saved'])} "
            f"| {r['bptt'] / r['snntorch_forward']:,.0f}x "
            f"| {r['bptt'] / r['torchsim_forward']:,.1f}x |"
        )
    same = all(r["same_counts"] for r in result["rows"].values())
    lines += ["", f"snnTorch and torch-sim forward counts identical: {'yes' if same else 'NO'}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 10])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 400])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # several threads on a loaded box: barrier waits
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        result = run(args.sizes, args.batch, args.steps, device)
        print("\n".join(table(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
