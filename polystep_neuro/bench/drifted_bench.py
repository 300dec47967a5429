"""An snnTorch user's own network adapted with `polystep-neuro adapt`'s default flags, given
drifted data only, and given clean replay data as well.

    python -m polystep_neuro.bench.drifted_bench [--seeds 0 1 2] [--steps 300]

A 64-32-10 snnTorch network (examples/snntorch_digits.py) is trained with BPTT on clean
digits, converted to device semantics (every weight and neuron bias writable), deployed on
torch-sim-fixed and then sees a drift: half the input gain and 20 % dead pixels.  The run
goes through the same job as the command line (`run_adapt_job`) with its defaults: a fifth
of the drifted data held out for validation; with no clean data, the hidden neurons' biases
adapted and the start's own outputs as the anchor (polystep_neuro.run.run_defaults).  Clean and
shifted test sets are never trained on.  The second row per seed adds the clean training
set as replay (`--replay`), which adapts every writable parameter and turns the anchor off;
the third gives drifted data only but names every weight and bias writable (`--writable`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # `python -m polystep_neuro.bench.drifted_bench`
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from polystep_neuro.run.adapt_job import AdaptJob, run_adapt_job  # noqa: E402
from polystep_neuro.run.data import InputShift  # noqa: E402
from polystep_neuro.run.interop import (  # noqa: E402
    device_writable,
    from_snntorch,
    to_device_semantics,
)

NUM_STEPS = 16
HIDDEN = 32
EPOCHS = 10
DRIFT = InputShift(gain=0.5, dead_fraction=0.2, seed=1)
# What each row gives the run: adapt's defaults with drifted data only, the same with clean
# replay, and drifted data only with every writable parameter named (--writable), which
# shows why the default narrows to the hidden biases.
EVERY = "drifted only, --writable every weight and bias"
MODES = ("drifted only", "drifted + clean replay", EVERY)


@dataclass(frozen=True)
class Row:
    seed: int
    mode: str
    clean: tuple[float, float]  # test accuracy at the start, of what is handed back
    shifted: tuple[float, float]
    seconds: float
    adapted: tuple[str, ...] = ()  # the parameters the run adapted


def run_seed(seed: int, steps: int, workdir: Path, modes: tuple[str, ...] = MODES) -> list[Row]:
    """Train one snnTorch network, then adapt it once per mode; returns one row per mode."""
    from snntorch_digits import digits_spikes, make_model, train_bptt

    data = digits_spikes(NUM_STEPS, DRIFT, seed)
    y_train, y_test = data.split.y_train, data.split.y_test
    model = make_model(HIDDEN, seed=seed)
    train_bptt(model, data.train, y_train, epochs=EPOCHS, seed=seed)
    spec, _ = to_device_semantics(from_snntorch(model, num_steps=NUM_STEPS))
    spec = spec.with_writable(device_writable(spec))
    spec.save(workdir / "spec.npz")
    files = {
        "drifted": (data.shifted_train, y_train),
        "clean_train": (data.train, y_train),
        "clean_test": (data.test, y_test),
        "shifted_test": (data.shifted_test, y_test),
    }
    for name, (spikes, labels) in files.items():
        np.savez(workdir / f"{name}.npz", spikes=spikes, labels=labels)
    rows = []
    for i, mode in enumerate(modes):
        job = AdaptJob(
            spec_path=workdir / "spec.npz",
            data_path=workdir / "drifted.npz",
            replay_path=workdir / "clean_train.npz" if "replay" in mode else None,
            writable=spec.writable if mode == EVERY else None,
            test_paths={
                "clean": workdir / "clean_test.npz",
                "shifted": workdir / "shifted_test.npz",
            },
            steps=steps,
            out_dir=workdir / f"mode{i}",
            progress=False,
        )
        start = time.perf_counter()
        result = run_adapt_job(job)
        rows.append(
            Row(
                seed,
                mode,
                (result.start["clean_accuracy"], result.end["clean_accuracy"]),
                (result.start["shifted_accuracy"], result.end["shifted_accuracy"]),
                time.perf_counter() - start,
                result.adapted,
            )
        )
    return rows


def run(
    seeds: list[int],
    steps: int,
    progress: Callable[[str], None] = print,
    modes: tuple[str, ...] = MODES,
) -> list[Row]:
    rows: list[Row] = []
    torch.set_num_threads(1)
    for seed in seeds:
        progress(f"drifted: seed {seed}")
        with tempfile.TemporaryDirectory() as tmp:
            rows += run_seed(seed, steps, Path(tmp), modes)
    return rows


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| data the run sees | adapts | seed | shifted test: start -> handed back | clean test: "
        "start -> handed back | adaptation s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {', '.join(r.adapted)} | {r.seed} | "
            f"{100 * r.shifted[0]:.1f} -> {100 * r.shifted[1]:.1f} % "
            f"({100 * (r.shifted[1] - r.shifted[0]):+.1f}) | {100 * r.clean[0]:.1f} -> "
            f"{100 * r.clean[1]:.1f} % ({100 * (r.clean[1] - r.clean[0]):+.1f}) | "
            f"{r.seconds:.0f} |"
        )
    for mode in dict.fromkeys(r.mode for r in rows):
        mine = [r for r in rows if r.mode == mode]
        shifted = statistics.median(100 * (r.shifted[1] - r.shifted[0]) for r in mine)
        clean = statistics.median(100 * (r.clean[1] - r.clean[0]) for r in mine)
        lines.append(f"| {mode}: median | | | {shifted:+.1f} | {clean:+.1f} | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="adaptation steps (300: adapt's)")
    args = parser.parse_args(argv)
    print("\n".join(table(run(args.seeds, args.steps, lambda s: print(s, flush=True)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
