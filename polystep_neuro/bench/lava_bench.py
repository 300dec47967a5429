"""Lava: seconds per evaluated vertex, V replicas in one graph vs one vertex at a time.

    python -m polystep_neuro.bench.lava_bench            # 64-128-10, T=25, V=16, B=32, fixed_pt
    python -m polystep_neuro.bench.lava_bench --writable all --vertices 64 --batch 128
    python -m polystep_neuro.bench.lava_bench --sweep    # layouts: V=16/64 x B=32/128, both sets
    python -m polystep_neuro.bench.lava_bench --json out.json   # also write the figures

Runs in the Lava venv (re-executes itself with it when started from the host env).  Three
ways to evaluate the same V weight sets on the same network and inputs:

- replicas: ``simulators.lava_net.LavaNet``: V replicas in one graph, one upload per
  evaluate, samples side by side (layout from the cost model);
- sequential Var.set: plain Lava (RingBuffer source, Dense, LIF, Reset processes, RingBuffer
  sink): per vertex ``Var.set`` the varied weights, run B*T steps, ``Var.get`` the spikes;
- sequential bridge: LavaNet pinned to one replica (one vertex per run, same bridge).

The sequential ways are timed on a few vertices and reported per vertex; all three must give
the same counts (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ensure_lava() -> None:
    """Re-run this script with the Lava venv's python if Lava is not importable here."""
    try:
        import lava.magma  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from devices.lava_env import find_lava_env, venv_python

        venv = find_lava_env()
        if venv is None:
            sys.exit("needs the Lava env: run `polystep-neuro devices setup-lava` first")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        os.execve(str(venv_python(venv)), [str(venv_python(venv)), *sys.argv], env)


_ensure_lava()
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from lava.magma.core.run_conditions import RunSteps  # noqa: E402
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava.proc.dense.process import Dense  # noqa: E402
from lava.proc.io.reset import Reset  # noqa: E402
from lava.proc.io.sink import RingBuffer as Sink  # noqa: E402
from lava.proc.io.source import RingBuffer as Source  # noqa: E402
from lava.proc.lif.process import LIF  # noqa: E402
from lava.utils.weightutils import SignMode  # noqa: E402

from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from simulators import fixed_point as fp  # noqa: E402
from simulators.lava_net import LavaNet  # noqa: E402
from simulators.lava_plan import DeviceNet  # noqa: E402

WRITABLE = {"readout": ("fc1.weight",), "all": ("fc0.weight", "fc1.weight")}


def make_problem(args: argparse.Namespace, which: str, num_sets: int, batch: int):
    sizes = [int(s) for s in args.sizes.split(",")]
    spec = NetworkSpec.random(
        sizes, args.steps, seed=0, du=0.5, dv=0.1, weight_gain=3.0, writable=WRITABLE[which]
    )
    if args.mode == "fixed_pt":
        spec = fp.calibrate(spec)
    rng = np.random.default_rng(1)
    params = {}
    for name in spec.writable:
        base = spec.parameters()[name]
        noise = rng.standard_normal((num_sets, *base.shape)).astype(np.float32)
        params[name] = base[None] * (1 + 0.3 * noise)
    x = (rng.random((batch, args.steps, sizes[0])) < args.density).astype(np.float32)
    return spec, params, x


def time_replicas(spec, params, x, mode, repeats=2, **kw) -> tuple[float, np.ndarray, str]:
    net = LavaNet(spec, mode, **kw)
    try:
        counts = net.evaluate(params, x)  # builds the graph
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            counts = net.evaluate(params, x)
            best = min(best, time.perf_counter() - t0)
        layout = next(iter(net._graphs))
        return best, counts, f"R={layout.replicas} b={layout.parallel}"
    finally:
        net.close()


def time_var_set(spec, params, x, mode, num_sets) -> tuple[float, np.ndarray]:
    """Plain Lava, one vertex at a time: Var.set the varied weights, run, Var.get."""
    net = DeviceNet(spec, mode)
    batch, steps, n_in = x.shape
    source = Source(data=x.reshape(batch * steps, n_in).T.astype(np.int32))
    prev, processes, dense_of = source, [], {}
    for i, dev in enumerate(net.layers):
        kw = {"weight_exp": dev.weight_exp, "sign_mode": SignMode.MIXED} if net.fixed else {}
        dense = Dense(weights=dev.weight, **kw)
        lif = LIF(
            shape=(dev.weight.shape[0],),
            du=dev.du,
            dv=dev.dv,
            vth=dev.vth,
            bias_mant=dev.bias_mant,
            bias_exp=dev.bias_exp,
        )
        prev.s_out.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        for var in (dense.a_buff, lif.u, lif.v):  # back to rest after every sample
            reset = Reset(reset_value=0, interval=steps, offset=steps - 1)
            reset.connect_var(var)
        processes += [dense, lif]
        dense_of[i] = dense
        prev = lif
    sink = Sink(shape=(spec.n_out,), buffer=batch * steps)
    prev.s_out.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag=mode)
    counts = np.zeros((num_sets, batch, spec.n_out), dtype=np.int32)
    slots = list(net.slots)
    try:
        # Var.set needs a started runtime: one pass with the loaded weights first
        sink.run(condition=RunSteps(num_steps=batch * steps), run_cfg=cfg)
        t0 = time.perf_counter()
        for v in range(num_sets):
            arrays = net.replica_arrays({k: a[v : v + 1] for k, a in params.items()}, 1)
            for slot in slots:
                dense_of[slot.layer].weights.set(arrays[slot][0])
            sink.run(condition=RunSteps(num_steps=batch * steps), run_cfg=cfg)
            spikes = sink.data.get().reshape(spec.n_out, batch, steps)
            counts[v] = spikes.sum(axis=2).T
        return (time.perf_counter() - t0) / num_sets, counts
    finally:
        sink.stop()


def compare(args: argparse.Namespace) -> dict:
    """Time the three ways side by side; prints as it goes and returns the figures."""
    spec, params, x = make_problem(args, args.writable, args.vertices, args.batch)
    v_seq = min(args.sequential_vertices, args.vertices)
    head = {k: a[:v_seq] for k, a in params.items()}
    print(
        f"network {args.sizes.replace(',', '-')}, T={spec.num_steps}, B={args.batch}, "
        f"{args.mode}, writable {', '.join(spec.writable)}, V={args.vertices}",
        flush=True,
    )
    t_rep, counts, layout = time_replicas(spec, params, x, args.mode)
    per_rep = t_rep / args.vertices
    print(
        f"  replicas in one graph ({layout}): {t_rep:.3f} s per evaluate = "
        f"{per_rep * 1e3:.1f} ms per vertex",
        flush=True,
    )
    t_bridge, c_bridge, _ = time_replicas(spec, head, x, args.mode, repeats=1, replicas=1)
    per_bridge = t_bridge / v_seq
    print(
        f"  sequential bridge runs (R=1, {v_seq} vertices): {per_bridge * 1e3:.1f} ms per "
        f"vertex -> replicas {per_bridge / per_rep:.1f}x faster",
        flush=True,
    )
    per_set, c_set = time_var_set(spec, head, x, args.mode, v_seq)
    print(
        f"  sequential Var.set + run ({v_seq} vertices): {per_set * 1e3:.1f} ms per vertex "
        f"-> replicas {per_set / per_rep:.1f}x faster",
        flush=True,
    )
    same = np.array_equal(counts[:v_seq], c_bridge) and np.array_equal(counts[:v_seq], c_set)
    print(f"  counts identical across the three: {same}", flush=True)
    return {
        "sizes": args.sizes.replace(",", "-"),
        "steps": spec.num_steps,
        "batch": args.batch,
        "mode": args.mode,
        "writable": list(spec.writable),
        "vertices": args.vertices,
        "sequential_vertices": v_seq,
        "layout": layout,
        "replicas_s_per_vertex": per_rep,
        "bridge_s_per_vertex": per_bridge,
        "var_set_s_per_vertex": per_set,
        "same_counts": bool(same),
    }


def sweep(args: argparse.Namespace) -> None:
    print(f"{'mode':11s} {'writable':8s} {'V':>3s} {'B':>4s}  layout       s/evaluate  ms/vertex")
    for which in ("readout", "all"):
        for num_sets in (16, 64):
            for batch in (32, 128):
                spec, params, x = make_problem(args, which, num_sets, batch)
                t, _, layout = time_replicas(spec, params, x, args.mode, repeats=1)
                print(
                    f"{args.mode:11s} {which:8s} {num_sets:3d} {batch:4d}  {layout:11s} "
                    f"{t:10.3f}  {t / num_sets * 1e3:9.1f}",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="fixed_pt", choices=["fixed_pt", "floating_pt"])
    parser.add_argument("--sizes", default="64,128,10")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--vertices", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--writable", default="readout", choices=list(WRITABLE))
    parser.add_argument(
        "--sequential-vertices",
        type=int,
        default=2,
        help="vertices the sequential ways are timed on",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="time the replica layouts for V=16/64, B=32/128"
    )
    parser.add_argument("--json", help="also write the comparison's figures to this JSON file")
    args = parser.parse_args()
    if args.sweep:
        sweep(args)
        return
    result = compare(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    if not result["same_counts"] and args.mode == "fixed_pt":
        sys.exit("counts differ")


if __name__ == "__main__":
    main()
