"""One GPU check in one command: the CUDA tests, CPU vs CUDA spike counts, the simulator
against the GPU's own matmul rate, PolyStep's ask/tell time and the quick demo on CUDA.

    python -m polystep_neuro.bench.gpu_check [--device cuda] [--quick] [--budget 300]
        [--out FILE.md]
    PYTHONPATH=. python3 -m polystep_neuro.bench.gpu_check   # from a bare copy of the repository

Asked for CUDA where there is none, it stops at once with one line and exit status 2: a
GPU check that silently skips is worse than none.  ``--device cpu`` runs the same code
on the CPU (a dry run of the harness; ``--quick`` shrinks every size).  Each part runs
under its own time limit, a share of ``--budget`` seconds (unused time passes to the
parts after it), so one slow part cannot eat the rest; a part that fails or overruns is
reported as such and the exit status is 1.  Everything runs in this process except the
tests (a pytest subprocess).  Nothing is downloaded; the report (markdown: machine,
versions, times, a table per part) is printed and written to ``--out`` (default
``runs/gpu_check-<device>-<time>.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if (
    str(ROOT) not in sys.path
):  # `python -m polystep_neuro.bench.gpu_check` or a bare copy of the tree
    sys.path.insert(0, str(ROOT))

# The tests that exercise CUDA (they skip without it).
CUDA_TESTS = ("tests/test_optim_polystep.py", "tests/test_torch_lif_golden.py")
NO_CUDA = 2  # exit status when CUDA was asked for and is absent


class PartTimeout(BaseException):
    """A part ran past its limit (BaseException: no ``except Exception`` swallows it)."""


@dataclass
class Outcome:
    body: list[str] = field(default_factory=list)
    ok: bool = True
    note: str = ""


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    share: float  # of the budget
    run: Callable[[argparse.Namespace, float], Outcome]


# --------------------------------------------------------------------------- the parts
def part_tests(args: argparse.Namespace, limit: float) -> Outcome:
    """pytest -k cuda on the files with CUDA tests, in a subprocess (it can be killed)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-k", "cuda"]
    cmd += list(CUDA_TESTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if args.device != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a dry run: the tests must take their no-CUDA path
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, limit)
        )
    except subprocess.TimeoutExpired:
        return Outcome(
            [f"`{shlex.join(cmd[1:])}` ran past {limit:.0f} s"], ok=False, note="timeout"
        )
    rows = re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) (.*)$", proc.stdout, re.M)
    body = [f"`python {shlex.join(cmd[1:])}` (exit status {proc.returncode})", ""]
    body += ["| outcome | test |", "|---|---|"]
    body += [f"| {outcome} | {text.replace('|', '/')} |" for outcome, text in rows]
    summary = proc.stdout.strip().splitlines()[-1:] or proc.stderr.strip().splitlines()[-1:]
    body += ["", f"pytest: {summary[0] if summary else '(no output)'}"]
    passed = sum(o == "PASSED" for o, _ in rows)
    if args.device == "cuda":  # on a GPU a skip is a failure: the check must really run
        ok = proc.returncode == 0 and passed > 0 and all(o == "PASSED" for o, _ in rows)
    else:
        ok = proc.returncode == 0
    if not ok:
        body += ["", "```", *(proc.stdout + proc.stderr).strip().splitlines()[-15:], "```"]
    return Outcome(body, ok, "" if ok else "tests failed or skipped")


def part_parity(args: argparse.Namespace, limit: float) -> Outcome:
    from polystep_neuro.bench import device_parity

    results = device_parity.run(args.device, args.quick)
    ok = all(r["ok"] for r in results)
    return Outcome(
        device_parity.table(results, args.device), ok, "" if ok else "fixed-point counts differ"
    )


def part_roofline(args: argparse.Namespace, limit: float) -> Outcome:
    import torch

    from polystep_neuro.bench import roofline_bench

    cases = roofline_bench.QUICK_CASES if args.quick else roofline_bench.GPU_CASES
    dev = torch.device(args.device)
    results = [roofline_bench.measure(case, dev, repeats=3 if args.quick else 5) for case in cases]
    return Outcome(
        [
            "Each row: the simulator's (set, sample) pairs per second and its GEMM FLOP/s, "
            "against one square float32 `torch.mm` of the same FLOPs on the same device in "
            "the same run (TF32 off); fraction = mm time / simulator time (median of "
            "alternating rounds).",
            "",
            *roofline_bench.table(results),
        ]
    )


def part_polystep(args: argparse.Namespace, limit: float) -> Outcome:
    from polystep_neuro.bench import polystep_timing

    return Outcome(polystep_timing.table(polystep_timing.run(args.device, args.quick)))


def part_demo(args: argparse.Namespace, limit: float) -> Outcome:
    from polystep_neuro.run.demo import DemoConfig, run_demo

    steps = (20, 10) if args.quick else (250, 150)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DemoConfig.quick(torch_device=args.device, out_dir=Path(tmp) / "demo", progress=False)
        cfg = replace(
            cfg,
            pretrain=replace(cfg.pretrain, steps=steps[0]),
            adapt_steps=steps[1],
            eval_every=10,
            checkpoint_every=10 * max(steps),
        )
        result = run_demo(cfg, report=lines.append)
    body = [
        f"`DemoConfig.quick(torch_device={args.device!r})` with {steps[0]} pretraining and "
        f"{steps[1]} adaptation steps (hidden {cfg.hidden}, T={cfg.time_steps}, "
        f"B={cfg.batch_size}, adaptation backend {cfg.backend}).",
        "",
        "| stage | test accuracy |",
        "|---|---:|",
        *(f"| {name} | {value:.1%} |" for name, value in result.accuracies.items()),
        "",
        "| wall time | seconds |",
        "|---|---:|",
        *(f"| {name} | {secs:.1f} |" for name, secs in result.wall_seconds.items()),
        "",
        (
            f"recovered {result.recovered_fraction:.0%} of the accuracy the input shift took"
            if result.recovered_fraction == result.recovered_fraction  # not NaN
            else "the input shift took no accuracy, so there was nothing to recover"
        )
        + f"; {result.pretrain.evaluations + result.adaptation.evaluations:,} (candidate, "
        "sample) evaluations",
    ]
    return Outcome(body)


PARTS = (
    Part("tests", "CUDA tests (pytest -k cuda)", 0.18, part_tests),
    Part("parity", "CPU vs device spike counts", 0.17, part_parity),
    Part("roofline", "Simulator throughput against the device's matmul rate", 0.17, part_roofline),
    Part("polystep", "PolyStep ask + tell per step", 0.10, part_polystep),
    Part("demo", "The quick demo on the device", 0.28, part_demo),
)


# --------------------------------------------------------------------------- the harness
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after ``seconds``; a no-op elsewhere."""
    if (
        not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise PartTimeout(f"ran past its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def machine(device: str) -> list[str]:
    """What ran the check: GPU, driver, versions."""
    import numpy as np
    import torch

    lines = []
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, "
            f"compute capability {props.major}.{props.minor}, "
            f"{props.multi_processor_count} multiprocessors ({torch.cuda.device_count()} visible)"
        )
        lines.append(f"- NVIDIA driver: {_driver_version()}")
    else:
        lines.append("- GPU: none used (--device cpu: a dry run of the harness)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    lines += [
        f"- torch {torch.__version__}; CUDA runtime {torch.version.cuda or 'none'}; "
        f"cuDNN {cudnn or 'none'}",
        f"- Python {platform.python_version()}, numpy {np.__version__}; {platform.platform()}",
        f"- CPU: {os.cpu_count()} logical cores, torch CPU threads {torch.get_num_threads()}",
    ]
    return lines


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "unknown (nvidia-smi not available)"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_parts(
    args: argparse.Namespace, parts: tuple[Part, ...], progress
) -> list[tuple[Part, Outcome, float]]:
    start = time.perf_counter()
    reserve = 5.0  # for writing the report
    done = []
    for i, part in enumerate(parts):
        remaining = args.budget - (time.perf_counter() - start) - reserve
        shares = sum(p.share for p in parts[i:])
        limit = max(1.0, remaining * part.share / shares)
        progress(f"{part.key}: {part.title} (limit {limit:.0f} s)")
        t0 = time.perf_counter()
        try:
            with time_limit(limit + 2.0 if part.key == "tests" else limit):
                outcome = part.run(args, limit)
        except PartTimeout as exc:
            outcome = Outcome([f"Stopped: {exc}."], ok=False, note="timeout")
        except Exception as exc:  # a broken part is reported, the others still run
            outcome = Outcome([f"Failed: {type(exc).__name__}: {exc}"], ok=False, note="error")
        secs = time.perf_counter() - t0
        progress(f"{part.key}: {'ok' if outcome.ok else 'FAILED ' + outcome.note} in {secs:.0f} s")
        done.append((part, outcome, secs))
    return done


def render(args: argparse.Namespace, command: str, started: str, done, total: float) -> str:
    out = [
        f"# GPU check ({args.device}{', quick sizes' if args.quick else ''})",
        "",
        f"`{command}`; started {started}, finished {_now()}; {total:.0f} s of a "
        f"{args.budget:.0f} s budget.",
        "",
        *machine(args.device),
        "",
        "| part | result | seconds |",
        "|---|---|---:|",
        *(
            f"| {part.title} | {'ok' if o.ok else 'FAILED (' + o.note + ')'} | {secs:.0f} |"
            for part, o, secs in done
        ),
    ]
    for i, (part, outcome, _) in enumerate(done, 1):
        out += ["", f"## {i}. {part.title}", "", *outcome.body]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m polystep_neuro.bench.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small sizes (a harness check)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all parts")
    parser.add_argument("--out", type=Path, help="markdown report (default under runs/)")
    parser.add_argument(
        "--only", nargs="+", choices=[p.key for p in PARTS], help="run only these parts"
    )
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA was asked for but torch {torch.__version__} sees no CUDA device "
            f"(CUDA build: {torch.version.cuda or 'none'}); nothing was run",
            file=sys.stderr,
        )
        return NO_CUDA
    started = _now()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "runs" / f"gpu_check-{args.device}-{stamp}.md"
    command = shlex.join(
        [
            "python",
            "-m",
            "polystep_neuro.bench.gpu_check",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f} s] {line}", file=sys.stderr, flush=True)

    parts = tuple(p for p in PARTS if not args.only or p.key in args.only)
    done = run_parts(args, parts, progress)
    text = render(args, command, started, done, time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    progress(f"wrote {out}")
    return 0 if all(o.ok for _, o, _ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
