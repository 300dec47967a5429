"""Run the demo for seeds 0, 1 and 2 and write what it printed into README.md.

    python tools/readme_demo.py [--seeds 0 1 2] [--out runs/readme-demo]

The README's demo block (between the ``demo-output`` markers) is this script's output, so
it always shows a real run of this code; the machine (cores, load) is stated with it.
tests/test_readme.py checks that the block has the format the demo prints.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"


def machine() -> str:
    """The CPU's model and ISA (the benchmarks' own reading of it), cores, load, threads."""
    from polystep_neuro.bench.machine import cpu_facts

    facts = cpu_facts()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{facts.model} ({', '.join(facts.isa) or 'no AVX2/AVX-512/NEON flags seen'}), "
        f"{os.cpu_count()} cores, "
        f"load average {load:.2f} at the start, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def parse(lines: list[str]) -> tuple[float, float]:
    """(recovered share, clean change in points) from the demo's last report line."""
    text = "\n".join(lines)
    m = re.search(
        r"recovered (-?\d+)% of the accuracy the shift took; clean accuracy ([+-]\d+\.\d) points",
        text,
    )
    if m is None:
        raise SystemExit("the demo's output has no 'adaptation recovered' line")
    return int(m.group(1)) / 100, float(m.group(2))


def block(runs: list[dict], where: str) -> str:
    """The README block: the first seed's full output, then one row per seed and the medians."""
    shown = [line for line in runs[0]["lines"] if not line.startswith("wrote ")]
    lines = [f"Seed {runs[0]['seed']} ({where}):", "", "```text", *shown, "```", ""]
    lines += [
        "| seed | recovered | clean change (points) | adaptation s | total s |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        rec, clean = parse(run["lines"])
        lines.append(
            f"| {run['seed']} | {rec:.0%} | {clean:+.1f} | {run['adapt_s']:.0f} | "
            f"{run['total_s']:.0f} |"
        )
    recs, cleans = zip(*(parse(run["lines"]) for run in runs), strict=True)
    lines.append(
        f"| median | {statistics.median(recs):.0%} | {statistics.median(cleans):+.1f} | | |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/readme-demo"))
    args = parser.parse_args()
    from polystep_neuro.run.demo import DemoConfig, run_demo

    where = machine()
    runs = []
    for seed in args.seeds:
        lines: list[str] = []
        cfg = DemoConfig(seed=seed, out_dir=args.out / f"seed{seed}", progress=False)
        result = run_demo(cfg, report=lambda line, sink=lines: (sink.append(line), print(line)))
        walls = result.wall_seconds
        runs.append(
            {"seed": seed, "lines": lines, "adapt_s": walls["adapt"], "total_s": walls["total"]}
        )
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + block(runs, where) + "\n" + END + tail, "utf-8")
    print(f"wrote the demo block of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
