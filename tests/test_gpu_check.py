"""The GPU check's harness on a CPU: it refuses loudly without CUDA, its dry run writes the
full report, and a part past its time limit is stopped and reported."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polystep_neuro.bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "command",
    [
        ["polystep_neuro.bench.gpu_check"],
        ["polystep_neuro.bench.gpu_check", "--quick"],
        ["polystep_neuro", "bench", "--device", "cuda", "--quick"],
    ],
)
def test_asking_for_cuda_without_it_fails_at_once_with_one_line(
    command: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "report.md"
    proc = _run([*command, "--out", str(out)], CUDA_VISIBLE_DEVICES="")  # no GPU, even on one
    assert proc.returncode == gpu_check.NO_CUDA == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu_check: CUDA was asked for but torch ")
    assert lines[0].endswith("; nothing was run")
    assert proc.stdout == "" and not out.exists()


def test_dry_run_on_cpu_writes_every_part(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    started = time.perf_counter()
    proc = _run(
        ["polystep_neuro.bench.gpu_check", "--device", "cpu", "--quick", "--out", str(out)],
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - started < 240
    text = out.read_text(encoding="utf-8")
    assert proc.stdout == text + "\n"  # printed and written
    assert text.startswith("# GPU check (cpu, quick sizes)")
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, finished ", text)
    assert "- torch " in text and "CUDA runtime" in text
    titles = [p.title for p in gpu_check.PARTS]
    for i, title in enumerate(titles, 1):
        assert f"## {i}. {title}" in text
        assert f"| {title} | ok |" in text
    sections = re.split(r"^## \d+\. ", text, flags=re.M)[1:]
    assert all(re.search(r"^\|---", body, flags=re.M) for body in sections)  # a table each
    tests, parity, roofline, polystep, demo = sections
    assert tests.count("| SKIPPED |") == 2  # both CUDA tests, on their no-CUDA path
    assert parity.count("| bit-identical |") == 3 and "MISMATCH" not in parity
    assert re.search(
        r"\| loihi-fixed \| [\d,]+ \| [\d.]+ \| [\d.]+ \| \d+% \| \d+\.\d\dx \|", roofline
    )
    assert re.search(r"\| 5,130 \| 64 \| 148 \| \d+\.\d\d \|", polystep)
    accuracies = re.findall(r"^\| adapted \(shifted\) \| (\d+\.\d)% \|$", demo, flags=re.M)
    assert len(accuracies) == 1 and float(accuracies[0]) > 10.0  # above chance


def test_a_part_past_its_limit_is_stopped_and_the_rest_still_run() -> None:
    def slow(args: argparse.Namespace, limit: float) -> gpu_check.Outcome:
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            time.sleep(0.01)
        return gpu_check.Outcome(["never"])

    def broken(args: argparse.Namespace, limit: float) -> gpu_check.Outcome:
        raise RuntimeError("no such kernel")

    def quick(args: argparse.Namespace, limit: float) -> gpu_check.Outcome:
        return gpu_check.Outcome(["| a |", "|---|"])

    parts = (
        gpu_check.Part("slow", "Slow", 0.1, slow),
        gpu_check.Part("broken", "Broken", 0.1, broken),
        gpu_check.Part("quick", "Quick", 0.8, quick),
    )
    args = argparse.Namespace(device="cpu", quick=True, budget=25.0)
    started = time.perf_counter()
    done = gpu_check.run_parts(args, parts, progress=lambda line: None)
    assert time.perf_counter() - started < 10  # the slow part got 2 s of the 25
    outcomes = {part.key: outcome for part, outcome, _ in done}
    assert not outcomes["slow"].ok and outcomes["slow"].note == "timeout"
    assert "ran past its 2 s limit" in outcomes["slow"].body[0]
    assert (
        not outcomes["broken"].ok and "RuntimeError: no such kernel" in outcomes["broken"].body[0]
    )
    assert outcomes["quick"].ok and outcomes["quick"].body == ["| a |", "|---|"]
