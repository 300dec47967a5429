"""The main job: pretrain without gradients, deploy in fixed point, drift, adapt on the device.

Stages (each reported as it finishes):
  (a) pretrain a 64 -> hidden LIF -> 10 LIF network on digits with PolyStep on the float
      torch simulator (forward passes only): the hidden layer is a fixed random projection,
      the readout is learned;
  (b) quantise it to Loihi 2 fixed point and measure the accuracy change;
  (c) apply an input shift (noise, gain loss, dead inputs) and measure the drop;
  (d) adapt only the device-writable parameters on the chosen backend with a mixed clean +
      shifted stream, so clean accuracy holds;
  (e) print a before/after table, write a PNG figure, metrics logs and summary.json.

Every stage checkpoints into the output folder; ``resume=True`` continues where a previous
run stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from devices.base import BaseBackend
from devices.registry import open_backend
from polystep_neuro import plots
from polystep_neuro.controller import CHECKPOINT_NAME, Adapter, AdaptResult
from polystep_neuro.data import InputShift, SpikeDataset, concat, load_digits_split, rate_encode
from polystep_neuro.errors import Interrupted
from polystep_neuro.losses import accuracy, make_loss
from polystep_neuro.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.params import ParamVector
from simulators import fixed_point

# What Lava and Loihi 2 can change at runtime: weights and neuron biases (Lava's fixed-point
# LIF caches its threshold after the first step, so thresholds are not in the default set).
DEFAULT_WRITABLE = ("fc1.weight", "lif1.v_bias")


@dataclass
class StageSettings:
    """PolyStep settings for one stage (radii are distances in the subspace coordinates)."""

    steps: int
    rank: int
    step_radius: float
    probe_radius: float
    epsilon: float
    absorb_interval: int = 20
    scaling: str = "none"  # see polystep_neuro.params: "auto" scales each tensor by its kind


@dataclass
class DemoConfig:
    backend: str = "torch-sim-fixed"
    device: str = "auto"
    out_dir: Path = Path("runs/demo")
    seed: int = 0
    hidden: int = 512
    num_steps: int = 25
    batch_size: int = 128
    writable: tuple[str, ...] = DEFAULT_WRITABLE
    pretrain: StageSettings = field(default_factory=lambda: StageSettings(1200, 128, 0.5, 1.0, 0.3))
    adapt: StageSettings = field(
        default_factory=lambda: StageSettings(300, 64, 0.1, 0.2, 0.3, scaling="auto")
    )
    shift: InputShift = field(
        default_factory=lambda: InputShift(noise=0.1, gain=0.6, dead_fraction=0.1, seed=1)
    )
    resume: bool = False
    progress: bool = True
    eval_every: int = 25
    checkpoint_every: int = 50

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Small sizes for tests and smoke runs (about a minute on two CPU cores)."""
        cfg = cls(
            hidden=128,
            num_steps=16,
            pretrain=StageSettings(250, 128, 0.5, 1.0, 0.3),
            adapt=StageSettings(150, 64, 0.1, 0.2, 0.3, scaling="auto"),
        )
        return replace(cfg, **overrides)


@dataclass
class DemoResult:
    accuracies: dict[str, float]
    recovered_fraction: float
    wall_seconds: dict[str, float]
    out_dir: Path
    pretrain: AdaptResult
    adaptation: AdaptResult
    spec: NetworkSpec


def _report_default(line: str) -> None:
    print(line, flush=True)


def _accuracy(backend: BaseBackend, data: SpikeDataset) -> float:
    """Accuracy of the backend's loaded network (its own values) on all of ``data``."""
    counts = torch.as_tensor(backend.evaluate({}, data.spikes))
    return float(accuracy(counts, data.labels.to(counts.device))[0])


def _stage(
    name: str,
    spec: NetworkSpec,
    backend: BaseBackend,
    train: SpikeDataset,
    monitor: SpikeDataset,
    settings: StageSettings,
    cfg: DemoConfig,
    device: torch.device,
) -> AdaptResult:
    layout = ParamVector(spec, scaling=settings.scaling)
    sub = Subspace(sizes=layout.sizes, rank=settings.rank, absorb_interval=settings.absorb_interval)
    optimizer = PolyStep(
        layout.flatten(spec, device),
        step_radius=settings.step_radius,
        probe_radius=settings.probe_radius,
        epsilon=settings.epsilon,
        subspace=sub,
        seed=cfg.seed,
    )
    adapter = Adapter(
        spec,
        backend,
        optimizer,
        make_loss("ce", spec.num_steps, scale=0.5),
        train,
        out_dir=cfg.out_dir / name,
        monitor=monitor,
        checkpoint_every=cfg.checkpoint_every,
        eval_every=cfg.eval_every,
        progress=cfg.progress,
        description=name,
        layout=layout,
    )
    if cfg.resume and (cfg.out_dir / name / CHECKPOINT_NAME).exists():
        adapter.resume()
    return adapter.run(settings.steps)


def run_demo(cfg: DemoConfig, report: Callable[[str], None] = _report_default) -> DemoResult:
    """Run all five stages; raises PolystepError (with a message) on bad settings."""
    from simulators.torch_lif import resolve_device

    device = resolve_device(cfg.device)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t0 = time.perf_counter()

    split = load_digits_split(cfg.seed)
    t = cfg.num_steps

    def encode(x: Any, y: Any, shuffle_seed: int) -> SpikeDataset:
        return SpikeDataset(rate_encode(x, t), y, cfg.batch_size, seed=shuffle_seed).to(device)

    clean_train = encode(split.x_train, split.y_train, cfg.seed)
    clean_test = encode(split.x_test, split.y_test, cfg.seed)
    shifted_train = encode(cfg.shift(split.x_train), split.y_train, cfg.seed)
    shifted_test = encode(cfg.shift(split.x_test), split.y_test, cfg.seed)
    report(
        f"digits: {len(clean_train)} train / {len(clean_test)} test samples, rate-coded over "
        f"{t} steps; network 64 -> {cfg.hidden} -> 10 LIF; device {device}"
    )

    # (a) pretraining, float simulator, readout learned from scratch
    spec = NetworkSpec.random(
        [64, cfg.hidden, 10],
        t,
        seed=cfg.seed,
        du=1.0,
        dv=0.1,
        vth=1.0,
        weight_gain=1.0,
        writable=("fc1.weight",),
    )
    float_backend = open_backend("torch-sim", device=device)
    float_backend.load(spec)
    report(f"(a) pretraining the readout with PolyStep ({cfg.pretrain.steps} steps, no gradients)")
    pre = _stage(
        "pretrain", spec, float_backend, clean_train, clean_test, cfg.pretrain, cfg, device
    )
    _stop_if_interrupted(pre, cfg.out_dir / "pretrain")
    trained = pre.spec.with_writable(cfg.writable)
    float_backend.load(trained)
    acc_float = _accuracy(float_backend, clean_test)
    walls["pretrain"] = pre.wall_seconds
    report(f"    float32 test accuracy {acc_float:.1%}  ({pre.wall_seconds:.0f} s)")

    # (b) quantisation to Loihi 2 fixed point
    deployed = fixed_point.calibrate(trained)
    fixed_sim = open_backend("torch-sim-fixed", device=device)
    fixed_sim.load(deployed)
    acc_fixed = _accuracy(fixed_sim, clean_test)
    report(
        f"(b) Loihi 2 fixed point: test accuracy {acc_fixed:.1%} "
        f"({100 * (acc_fixed - acc_float):+.1f} points)"
    )

    # (c) input drift on the deployed device
    acc_shift = _accuracy(fixed_sim, shifted_test)
    report(
        f"(c) input shift ({cfg.shift.describe()}): accuracy {acc_shift:.1%} "
        f"({100 * (acc_shift - acc_fixed):+.1f} points)"
    )

    # (d) adaptation of the writable subset on the chosen backend
    backend = open_backend(
        cfg.backend, **({"device": device} if "torch-sim" in cfg.backend else {})
    )
    try:
        backend.load(deployed)
        report(
            f"(d) adapting {', '.join(cfg.writable)} on {cfg.backend} "
            f"({backend.capabilities.device}), forward passes only"
        )
        mixed = concat(clean_train, shifted_train, cfg.batch_size, cfg.seed + 1).to(device)
        adapted = _stage("adapt", deployed, backend, mixed, shifted_test, cfg.adapt, cfg, device)
    finally:
        backend.close()
    _stop_if_interrupted(adapted, cfg.out_dir / "adapt")
    walls["adapt"] = adapted.wall_seconds
    fixed_sim.load(adapted.spec)
    acc_adapted = _accuracy(fixed_sim, shifted_test)
    acc_clean_after = _accuracy(fixed_sim, clean_test)
    lost = acc_fixed - acc_shift
    recovered = (acc_adapted - acc_shift) / lost if lost > 0 else float("nan")

    # (e) report
    accuracies = {
        "float32 pretrained": acc_float,
        "Loihi 2 fixed point": acc_fixed,
        "after input shift": acc_shift,
        "adapted (shifted)": acc_adapted,
        "adapted (clean)": acc_clean_after,
    }
    walls["total"] = time.perf_counter() - t0
    report("")
    report("| stage | test accuracy |")
    report("|---|---|")
    for name, value in accuracies.items():
        report(f"| {name} | {value:.1%} |")
    report(
        f"adaptation recovered {recovered:.0%} of the accuracy the shift took; "
        f"clean accuracy {100 * (acc_clean_after - acc_fixed):+.1f} points; "
        f"total {walls['total']:.0f} s"
    )
    figure = cfg.out_dir / "demo.png"
    plots.demo_figure(figure, pre.history, adapted.history, accuracies)
    summary = {
        "accuracies": accuracies,
        "recovered_fraction": recovered,
        "wall_seconds": walls,
        "evaluations": {"pretrain": pre.evaluations, "adapt": adapted.evaluations},
        "backend": cfg.backend,
        "device": str(device),
        "config": _jsonable(asdict(cfg)),
    }
    (cfg.out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    adapted.spec.save(cfg.out_dir / "adapted_network.npz")
    report(
        f"wrote {figure}, {cfg.out_dir / 'summary.json'}, metrics logs in "
        f"{cfg.out_dir / 'pretrain'} and {cfg.out_dir / 'adapt'}"
    )
    return DemoResult(accuracies, recovered, walls, cfg.out_dir, pre, adapted, adapted.spec)


def _stop_if_interrupted(result: AdaptResult, where: Path) -> None:
    if result.interrupted:
        raise Interrupted(
            f"interrupted after step {result.steps}; checkpoint saved in {where}; "
            "run the same command with --resume to continue"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
