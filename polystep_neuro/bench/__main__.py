"""Run every benchmark and write one markdown report.

    polystep-neuro bench [--out runs/benchmarks.md] [--quick] [--only NAME ...]
    polystep-neuro bench ...                                        (the same, from a checkout)
    polystep-neuro bench --device cuda [--quick] [--out FILE.md]   # the GPU check instead

Sections (``--only`` picks some): sim, roofline, adapt, drifted, deploy, labelfree, watch,
memory, lava, protocol, ray.  Every
comparison is a ratio of two measurements taken side by side in this run; the report
records the command, the date and the machine, goes to ``--out`` and to standard output
(progress lines go to standard error).  GPU rows are added where
``torch.cuda.is_available()``.  ``--quick`` uses tiny sizes (a smoke test of the harness:
its numbers mean little).  ``--device cuda`` runs ``gpu_check`` (see there): it fails
at once, exit status 2, where there is no CUDA.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from polystep_neuro.bench import machine as machine_facts

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("sim", "roofline", "adapt", "drifted", "deploy", "labelfree", "watch", "memory")
SECTIONS += ("lava", "protocol", "ray")

Progress = Callable[[str], None]


@dataclass
class Section:
    title: str
    intro: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    seconds: float = 0.0
    machine: str = ""  # bench.machine.describe() when the section ran


def doc_paragraphs(doc: str | None) -> list[str]:
    """A bench module's docstring after its title line, as markdown: the usage lines in a
    code block, reStructuredText roles and literals as backticks."""
    out = []
    for para in (doc or "").split("\n\n")[1:]:
        if not para.strip():
            continue
        if para.lstrip().startswith("python -m"):
            out.append("```bash\n" + textwrap.dedent(para).strip("\n") + "\n```")
            continue
        text = re.sub(r":(?:class|mod|func|meth):`~?([^`]+)`", r"`\1`", para.strip())
        out.append(text.replace("``", "`"))
    return out


# --------------------------------------------------------------------------- the sections
def section_sim(quick: bool, progress: Progress) -> Section:
    from polystep_neuro.bench import sim_bench

    configs = (
        [dict(V=8, B=16, T=10, sizes=[64, 32, 10], repeats=1, ref_vertices=2)]
        if quick
        else [
            dict(V=64, B=128, T=25, sizes=[64, 128, 10], repeats=3, ref_vertices=16),
            dict(V=256, B=128, T=25, sizes=[64, 512, 10], repeats=3, ref_vertices=8),
        ]
    )
    body: list[str] = []
    threads = 0
    for cfg in configs:
        progress(f"sim: torch-sim vs per-vertex snnTorch loop {cfg}")
        result = sim_bench.run(**cfg)
        threads = result["threads"]
        body += [
            f"**{'-'.join(map(str, cfg['sizes']))}, V={cfg['V']}, B={cfg['B']}, T={cfg['T']}** "
            f"(snnTorch loop timed on the first {cfg['ref_vertices']} sets, torch-sim best of "
            f"{cfg['repeats']})",
            "",
            *sim_bench.table(result),
            "",
        ]
    return Section(
        "torch-sim vs a per-vertex snnTorch loop",
        [
            "snnTorch semantics (leaky LIF, delay 0); V weight sets in which every weight "
            f"varies, B input samples, T steps, {threads} torch thread(s).  torch-sim "
            "evaluates all V sets in one call; the snnTorch loop (`nn.Linear` + `snn.Leaky`, "
            "one forward per weight set, under `no_grad`) is timed on the first few sets "
            "(its cost is linear in the number of sets) and its counts are compared with "
            "torch-sim's on those.  Speed-up = ratio of (vertex, sample) pairs per second.",
        ],
        body[:-1],
    )


def section_roofline(quick: bool, progress: Progress) -> Section:
    import torch

    from polystep_neuro.bench import low_rank_bench, roofline_bench

    cases = roofline_bench.QUICK_CASES if quick else roofline_bench.CASES
    results = []
    for case in cases:
        progress(f"roofline: {case.shape} {case.label}, V={case.sets}")
        results.append(roofline_bench.measure(case, torch.device("cpu"), 3 if quick else 5))
    low_rank = []
    for sizes in ((32, 64, 10),) if quick else roofline_bench.LOW_RANK_CASES:
        for precision in roofline_bench.PRECISIONS:
            progress(f"roofline: low-rank first layer, {'-'.join(map(str, sizes))}, {precision}")
            low_rank.append(
                roofline_bench.measure_low_rank(sizes, 8 if quick else 128, precision=precision)
            )
    adapting = []
    for sizes in ((16, 24, 4),) if quick else low_rank_bench.CASES:
        progress(f"roofline: adaptation with low-rank probes, {'-'.join(map(str, sizes))}")
        shape = {"steps": 6, "batch": 8, "rounds": 1} if quick else {}
        adapting.append(low_rank_bench.measure(sizes, **shape))
    return Section(
        "torch-sim against a plain float32 matmul of the same FLOPs (CPU roofline)",
        [
            "Lava semantics (delay 1, du = 1, dv = 0.1), rate-coded random input (p = 0.3), "
            f"{torch.get_num_threads()} torch thread(s).  The simulator's work is one GEMM per "
            "layer over all T steps for each distinct parameter set, 2 * T * B * sum(n_in * "
            "n_out * sets) FLOPs (a prefix all sets share counts once).  Yardstick: one "
            "square float32 `torch.mm` of the same FLOPs, timed in the same run; rounds "
            "alternate mm, float32 simulator, fixed-point simulator, and each ratio is the "
            "median of the per-round ratios.  Roofline fraction = mm time / simulator time.  "
            "Where the fixed-point simulator uses int8 x int8 -> int32 GEMMs (a CPU whose "
            "torch sums int8 exactly), its float-GEMM reference path is timed in the same "
            "rounds as a third row; the yardstick stays the float32 mm, so an int8 row can "
            "pass 100 %.  `polystep_neuro/bench/roofline_bench.py`.",
        ],
        [
            *roofline_bench.table(results),
            "",
            "**Low-rank first layer, all weights vary**: V sets whose "
            "first-layer weights are the loaded ones plus a rank-r term U Vt (loihi-fixed: "
            "integer factors on the device's weight grid, so the sums stay exact), evaluated as "
            "materialised weight sets and as x W^T + (x Vt^T) U^T "
            "(`TorchLIF.evaluate_low_rank`); inference = the loaded network on the B "
            "samples, V calls (as many pairs).  Rounds alternate the three; ratios are medians of "
            "per-round ratios.",
            "",
            *roofline_bench.low_rank_table(low_rank),
            "",
            "**Adaptation with low-rank probes** (`--low-rank-probes`, float32 torch-sim, "
            "every weight and bias, the recipe's defaults, random labels): whole steps (ask, "
            "simulate, tell) with the first layer's probes as factors against full weight "
            "sets, taken in turn, beside inference (the start network on the same minibatch, "
            "once per set).  `polystep_neuro/bench/low_rank_bench.py`.",
            "",
            *low_rank_bench.table(adapting),
        ],
    )


def section_adapt(quick: bool, progress: Progress) -> Section:
    import torch

    from polystep_neuro.bench import adapt_bench

    threads = torch.get_num_threads()
    try:
        result = adapt_bench.run(
            list(adapt_bench.TASKS),
            [0] if quick else adapt_bench.DEFAULT_SEEDS,
            list(adapt_bench.OPTIMIZERS),
            ablations=not quick,
            quick=quick,
            progress=lambda s: progress(f"adapt: {s}"),
        )
    finally:
        torch.set_num_threads(threads)
    return Section(
        "PolyStep vs sep-CMA-ES / OpenAI-ES / SPSA through the same adaptation loop, equal "
        "forward passes",
        doc_paragraphs(adapt_bench.__doc__),
        adapt_bench.tables(result),
    )


def section_drifted(quick: bool, progress: Progress) -> Section:
    import importlib.util

    import torch

    title = "An snnTorch network adapted with `adapt`'s defaults: drifted data only, or with replay"
    if not (ROOT / "examples" / "snntorch_digits.py").exists():
        return Section(title, ["Skipped: needs the repository's examples/ (run from a checkout)."])
    if importlib.util.find_spec("snntorch") is None:
        return Section(
            title, ['Skipped: snnTorch is not installed (`pip install -e ".[snntorch]"`).']
        )
    from polystep_neuro.bench import drifted_bench

    threads = torch.get_num_threads()
    try:
        rows = drifted_bench.run([0] if quick else [0, 1, 2], 20 if quick else 300, progress)
    finally:
        torch.set_num_threads(threads)
    return Section(title, doc_paragraphs(drifted_bench.__doc__), drifted_bench.table(rows))


def section_deploy(quick: bool, progress: Progress) -> Section:
    import importlib.util

    import torch

    title = "Deployment recovery of snnTorch-trained networks: the conversion gap, and `deploy`"
    if importlib.util.find_spec("snntorch") is None:
        return Section(
            title, ['Skipped: snnTorch is not installed (`pip install -e ".[snntorch]"`).']
        )
    from polystep_neuro.bench import deploy_bench

    threads = torch.get_num_threads()
    try:
        if quick:
            rows = deploy_bench.run((deploy_bench.QUICK,), [0], budget=3_000, progress=progress)
        else:
            rows = deploy_bench.run(deploy_bench.MODELS, [0, 1, 2], progress=progress)
    finally:
        torch.set_num_threads(threads)
    return Section(title, doc_paragraphs(deploy_bench.__doc__), deploy_bench.table(rows))


def _snntorch_missing(title: str) -> Section | None:
    import importlib.util

    if importlib.util.find_spec("snntorch") is None:
        return Section(
            title, ['Skipped: snnTorch is not installed (`pip install -e ".[snntorch]"`).']
        )
    return None


def section_labelfree(quick: bool, progress: Progress) -> Section:
    title = "Adapting without labels: the corruption suite, labelled vs label-free"
    missing = _snntorch_missing(title)
    if missing is not None:
        return missing
    from polystep_neuro.bench import labelfree_bench as lf

    if quick:
        rows = lf.run(["digits"], [0], ["rotate"], 10, ["default"], progress)
    else:
        rows = lf.run(["digits"], [0, 1, 2], [*lf.TUNED, *lf.HELD_OUT], 150, lf.VARIANTS, progress)
        rows += lf.run(["mnist5k"], [0, 1, 2], lf.MNIST_CORRUPTIONS, 100, ["default"], progress)
    body = [*lf.table(rows), "", *lf.per_corruption(rows)]
    return Section(title, doc_paragraphs(lf.__doc__), body)


def section_watch(quick: bool, progress: Progress) -> Section:
    title = "The stream watcher: clean, corrupted, clean again"
    missing = _snntorch_missing(title)
    if missing is not None:
        return missing
    from polystep_neuro.bench import labelfree_bench as lf
    from polystep_neuro.bench import watch_bench

    seeds, names, clean = (
        ([0], ["brightness"], 60) if quick else ([0, 1, 2], [*lf.TUNED, *lf.HELD_OUT], 2000)
    )
    rows = [r for s in seeds for r in watch_bench.run_seed(s, names, clean, progress, not quick)]
    return Section(title, doc_paragraphs(watch_bench.__doc__), watch_bench.table(rows))


def section_memory(quick: bool, progress: Progress) -> Section:
    import torch

    from polystep_neuro.bench import memory_bench

    sizes, batch, steps = ([64, 64, 10], 16, [5, 20]) if quick else ([64, 512, 10], 128, [25, 400])
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    body: list[str] = []
    for device in devices:
        progress(f"memory: {'-'.join(map(str, sizes))}, B={batch}, T={steps} on {device.type}")
        result = memory_bench.run(sizes, batch, steps, device, progress=progress)
        body += memory_bench.table(result) + [""]
    return Section(
        "Memory: forward-only evaluation vs BPTT with a surrogate gradient",
        [
            "Same network, batch and input spikes.  Forward-only: the snnTorch model stepped "
            "under `torch.no_grad()` (only the current state is kept, as on a device) and "
            "torch-sim with one parameter set (one GEMM per layer over 5-step chunks of "
            "(T, B, N) spike trains on one CPU thread, over all T steps on several threads or "
            "CUDA).  BPTT: the same snnTorch model with its default arctan surrogate "
            "gradient, cross-entropy on the output spike counts, `loss.backward()`.  Peaks "
            "are above the memory held before each call (weights and inputs excluded); on "
            "CPU they come from torch.profiler's allocator events (every allocation and "
            "free, in time order; the maximum of the running sum), on CUDA from "
            "`torch.cuda.max_memory_allocated`.  'Saved tensors' = bytes of the distinct "
            "storages autograd still holds for the backward pass when the forward pass ends "
            "(`torch.autograd.graph.saved_tensors_hooks` with weak references; inputs and "
            "weights excluded), an independent check of the BPTT peak.",
        ],
        body[:-1],
    )


def section_lava(quick: bool, progress: Progress) -> Section:
    from devices.lava_env import find_lava_env, venv_python

    title = "Lava: V replicas in one graph vs one vertex at a time"
    venv = find_lava_env()
    if venv is None:
        return Section(
            title,
            ["Skipped: no Lava venv here (`polystep-neuro devices setup-lava` creates one)."],
        )
    args = (
        ["--vertices", "4", "--batch", "8", "--steps", "10", "--sequential-vertices", "1"]
        if quick
        else ["--vertices", "16", "--batch", "32", "--steps", "25", "--sequential-vertices", "2"]
    )
    progress(f"lava: polystep_neuro/bench/lava_bench.py {' '.join(args)} in {venv}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lava.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [str(venv_python(venv)), str(ROOT / "bench" / "lava_bench.py"), *args, "--json", out],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if not out.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            return Section(title, ["Failed: lava_bench.py wrote no result.", "", *tail])
        r = json.loads(out.read_text(encoding="utf-8"))
    per_rep = r["replicas_s_per_vertex"]
    rows = [
        ("replicas in one graph (LavaNet, " + r["layout"] + ")", r["vertices"], per_rep),
        ("sequential: LavaNet pinned to 1 replica", r["sequential_vertices"], None),
        ("sequential: plain Lava, Var.set + run per vertex", r["sequential_vertices"], None),
    ]
    seconds = [per_rep, r["bridge_s_per_vertex"], r["var_set_s_per_vertex"]]
    body = [
        "| way | vertices timed | ms per vertex | replicas' speed-up |",
        "|---|---:|---:|---:|",
    ]
    for (name, count, _), secs in zip(rows, seconds, strict=True):
        body.append(f"| {name} | {count} | {secs * 1e3:.1f} | {secs / per_rep:.1f}x |")
    body += ["", f"counts identical across the three: {'yes' if r['same_counts'] else 'NO'}"]
    return Section(
        title,
        [
            f"Network {r['sizes']}, T={r['steps']}, B={r['batch']}, Lava CPU simulation "
            f"({r['mode']}), writable {', '.join(r['writable'])}, V={r['vertices']} weight "
            "sets (`polystep_neuro/bench/lava_bench.py`, run in the Lava venv).  The replica graph "
            "is timed "
            "on all V (best of 2 after a build pass); the sequential ways on the first "
            f"{r['sequential_vertices']} vertices, per vertex.",
        ],
        body,
    )


def section_protocol(quick: bool, progress: Progress) -> Section:
    from polystep_neuro.bench import protocol_bench

    mb, reps = (2.0, 3) if quick else (25.0, 20)
    progress(f"protocol: {mb} MB payload, {reps} round trips per path")
    result = protocol_bench.measure(mb, reps)
    return Section(
        "Protocol overhead: evaluate-sized round trip vs raw pyzmq",
        [
            f"{result['size_mb']:.1f} MB per direction ({', '.join(result['shapes'])}) over "
            f"loopback TCP to an in-process echo thread, {reps} round trips per path, the two "
            "paths alternating.  Protocol = encode (JSON header + zero-copy frames), send, "
            "server-side decode with every validation, encode back, client decode; raw = the "
            "same bytes as one frame, echoed (`copy=False` both ways).  Goal: protocol <= 2x "
            "raw.",
        ],
        protocol_bench.table(result)
        + ["", f"protocol / raw (median round trip): {result['ratio']:.2f}x"],
    )


def section_ray(quick: bool, progress: Progress) -> Section:
    import importlib.util

    title = "Ray: 2 local workers vs 1, and the per-call overhead vs in-process"
    if importlib.util.find_spec("ray") is None:
        return Section(title, ['Skipped: Ray is not installed (`pip install -e ".[ray]"`).'])
    from polystep_neuro.bench import ray_bench

    result = ray_bench.measure(quick, progress)
    return Section(title, [ray_bench.describe(result)], ray_bench.tables(result))


RUNNERS: dict[str, Callable[[bool, Progress], Section]] = {
    "sim": section_sim,
    "roofline": section_roofline,
    "adapt": section_adapt,
    "drifted": section_drifted,
    "deploy": section_deploy,
    "labelfree": section_labelfree,
    "watch": section_watch,
    "memory": section_memory,
    "lava": section_lava,
    "protocol": section_protocol,
    "ray": section_ray,
}


# --------------------------------------------------------------------------- the report
def machine() -> list[str]:
    """What the numbers were measured on."""
    import numpy as np
    import torch

    facts = machine_facts.cpu_facts()
    isa = ", ".join(facts.isa) or "no AVX2/AVX-512/NEON flags seen"
    cpu = f"{facts.model} ({isa}; torch kernels {torch.backends.cpu.get_cpu_capability()})"
    usable = machine_facts.usable_cores()
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ram_text = f"{ram:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        ram_text = "RAM unknown"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = (
            f"{machine_facts.gpu_name()} ({props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda})"
        )
    else:
        gpu = "none (no CUDA device: GPU rows skipped)"
    versions = [f"torch {torch.__version__}", f"numpy {np.__version__}"]
    for name in ("snntorch", "cma", "zmq"):
        try:
            module = __import__(name)
            versions.append(f"{'pyzmq' if name == 'zmq' else name} {module.__version__}")
        except ImportError:
            pass
    return [
        f"- CPU: {cpu}, {usable} usable cores ({os.cpu_count()} logical), {ram_text}",
        f"- GPU: {gpu}",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- {', '.join(versions)}; torch CPU threads used: {torch.get_num_threads()}",
    ]


def render(command: str, sections: list[tuple[str, Section]], total: float) -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {now}; total wall time {total:.0f} s.",
        "",
        "Machine:",
        "",
        *machine(),
        "",
        "Every comparison below is a ratio of two measurements taken side by side in this run "
        "(same process, same inputs, alternating or back to back); absolute times depend on "
        "the machine and its load.",
    ]
    for i, (name, sec) in enumerate(sections, 1):
        out += ["", f"## {i}. {sec.title}", ""]
        out += [*sec.intro, ""] if sec.intro else []
        out += sec.body
        out += ["", f"_Section `{name}`: {sec.seconds:.0f} s; {sec.machine}._"]
    return "\n".join(out) + "\n"


def bench_parser() -> argparse.ArgumentParser:
    """``polystep-neuro bench``'s flags (docs/cli.md is written from it too)."""
    parser = argparse.ArgumentParser(
        prog="polystep-neuro bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the report (default runs/benchmarks.md; docs/benchmarks.md is the published one)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: run the GPU check (python -m polystep_neuro.bench.gpu_check) instead of the "
        "CPU report",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness smoke test)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for every section (default 1: on a shared or loaded machine "
        "more threads mostly add OpenMP barrier waits; the adapt section always uses 1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = bench_parser().parse_args(argv)
    if args.device == "cuda":
        from polystep_neuro.bench import gpu_check

        forwarded = ["--device", "cuda", *(["--quick"] if args.quick else [])]
        return gpu_check.main(forwarded + (["--out", str(args.out)] if args.out else []))
    args.out = args.out or Path("runs/benchmarks.md")
    import torch

    torch.set_num_threads(args.threads)
    command = shlex.join(["polystep-neuro", "bench", *(sys.argv[1:] if argv is None else argv)])
    names = [s for s in SECTIONS if not args.only or s in args.only]
    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {line}", file=sys.stderr, flush=True)

    done: list[tuple[str, Section]] = []
    for name in names:
        t0 = time.perf_counter()
        section = RUNNERS[name](args.quick, progress)
        section.seconds = time.perf_counter() - t0
        section.machine = machine_facts.describe()
        progress(f"{name}: done in {section.seconds:.0f} s")
        done.append((name, section))
    text = render(command, done, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text, flush=True)
    progress(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
