"""The examples in examples/ run, at small sizes, and print real results.

Each example is run as a user runs it (``python examples/NN_name.py --small``, from the
repository root) and its last line, ``summary: {json}``, is checked: the numbers are
accuracies or costs the run measured, and adaptation must not make things worse beyond a
stated margin.  The Lava example needs the Lava venv: without it, it is skipped (unless
POLYSTEP_REQUIRE_LAVA=1, as in tests/test_lava_backend.py), and a run with no venv must
say how to create one.

The children run with one torch thread (OMP_NUM_THREADS=1): on a small shared CPU, torch's
default thread pool spins against other processes and is many times slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devices.lava_env import ENV_VAR, find_lava_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# How much worse than before (accuracy, as a fraction) an adapted network may score on a
# small run: a few dozen steps on 64-sample minibatches are noisy, not harmful.
MARGIN = 0.05


def _run(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240):
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: "), proc.stdout
    return json.loads(last.removeprefix("summary: "))


def _is_accuracy(value: Any) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def _check_adaptation(s: dict[str, Any], min_clean: float) -> None:
    keys = ("snntorch_clean", "before_clean", "before_shifted", "after_clean", "after_shifted")
    assert all(_is_accuracy(s[k]) for k in keys), s
    assert s["before_clean"] >= min_clean, s  # the snnTorch training worked
    assert s["before_shifted"] < s["before_clean"] - 0.05, s  # the shift hurts
    assert s["after_shifted"] >= s["before_shifted"] - MARGIN, s
    assert s["after_clean"] >= s["before_clean"] - MARGIN, s
    assert s["steps"] > 0 and s["evaluations"] > 0, s


def test_01_quickstart_ask_tell() -> None:
    s = _summary(_run("01_quickstart_ask_tell.py", "--small"))
    assert s["initial_cost"] > 1.0
    # PolyStep reaches the optimum (or next to it) where the gradient is zero everywhere
    assert s["final_cost"] <= 0.1 * s["initial_cost"], s
    assert s["evaluations"] == s["steps"] * 40  # 20 parameters: 10 blocks x 4 vertices


def test_02_snntorch_adapt_torch_sim() -> None:
    pytest.importorskip("snntorch")
    proc = _run("02_snntorch_adapt_torch_sim.py", "--small", "--no-progress")
    s = _summary(proc)
    _check_adaptation(s, min_clean=0.6)
    # from_snntorch is exact: torch-sim scores the converted spec as snnTorch scores the
    # model (a tolerance of two test samples, for BLAS kernels that round differently)
    assert abs(s["before_clean"] - s["snntorch_clean"]) <= 2 / 450 + 1e-6, s
    assert "| adapted on torch-sim |" in proc.stdout


def test_03_snntorch_adapt_lava_fixed() -> None:
    if find_lava_env() is None:
        message = "no Lava env: run `polystep-neuro devices setup-lava` (needs Python 3.10)"
        if os.environ.get("POLYSTEP_REQUIRE_LAVA") == "1":
            pytest.fail(f"POLYSTEP_REQUIRE_LAVA=1 but {message}")
        pytest.skip(message)
    pytest.importorskip("snntorch")
    proc = _run("03_snntorch_adapt_lava_fixed.py", "--small", "--no-progress")
    s = _summary(proc)
    _check_adaptation(s, min_clean=0.6)
    # the adapted network gives bit-identical counts on torch-sim-fixed and lava-fixed
    assert s["torch_sim_fixed_identical"] is True, s
    assert "changed for the device: layer 0: delay 0 -> 1" in proc.stdout


def test_03_without_lava_env_says_how_to_make_one(tmp_path: Path) -> None:
    proc = _run("03_snntorch_adapt_lava_fixed.py", "--small", env={ENV_VAR: str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "polystep-neuro devices setup-lava" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "summary:" not in proc.stdout


def test_04_remote_device() -> None:
    proc = _run("04_remote_device.py", "--small", "--no-progress")
    s = _summary(proc)
    assert "listening on tcp://127.0.0.1:" in proc.stdout
    assert "precision loihi-fixed" in proc.stdout
    assert _is_accuracy(s["before"]) and _is_accuracy(s["after"]), s
    # the readout starts random (chance is 10 %); a few steps on the device must help
    assert s["after"] >= s["before"] + 0.1, s
    assert s["server_exit_code"] == 0, s  # SIGTERM stops the server cleanly


def test_05_field_stream(tmp_path: Path) -> None:
    """The stream the README's watch command reads: written for the demo's network, the
    drift found within a few batches of its onset, the labels reported only."""
    from polystep_neuro.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    spec = tmp_path / "demo" / "adapted_network.npz"
    stream = tmp_path / "field.npz"
    proc = _run("05_field_stream.py", "--small", "--spec", str(spec), "--out", str(stream))
    s = _summary(proc)
    with np.load(stream) as data:
        assert data["spikes"].shape == (30 * 32, 16, 64) and data["labels"].shape == (30 * 32,)
    assert (s["onset"], s["end"], s["batches"]) == (12, 24, 30), s
    assert s["first_drift"] is not None and 12 <= s["first_drift"] <= 16, s
    assert _is_accuracy(s["served"]) and _is_accuracy(s["deployed"]), s
    assert f"over the fog stretch: served {s['served']:.1%}" in proc.stdout
