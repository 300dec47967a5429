"""The main job: pretrain without gradients, deploy in fixed point, drift, adapt on the device.

Stages (each reported as it finishes):
  (a) pretrain a 64 -> hidden LIF -> 10 LIF network on digits with PolyStep on the float
      torch simulator (forward passes only): the hidden layer is a fixed random projection,
      the readout is learned;
  (b) quantise it to Loihi 2 fixed point and measure the accuracy change;
  (c) apply an input shift (noise, gain loss, dead inputs) and measure the drop;
  (d) adapt the device-writable readout on the chosen backend with the run recipe that
      ``polystep-neuro adapt`` and ``polystep_neuro.adapt`` use (polystep_neuro.run.recipe)
      on a mixed clean + shifted stream; a held-out validation split (clean and shifted)
      decides which network is handed back, so it is never worse on validation than the
      deployed one;
  (e) print a before/after table, write a PNG figure, metrics logs and summary.json.

Every stage checkpoints into the output folder; ``resume=True`` continues where a previous
run stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devices.registry import open_backend
from polystep_neuro.core.contract import Backend
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.run import plots
from polystep_neuro.run.checkpoint import CHECKPOINT_NAME
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.data import (
    Drift,
    InputShift,
    SpikeDataset,
    concat,
    encode,
    encode_drifted,
    hold_out,
    load_split,
)
from polystep_neuro.run.deprecation import renamed
from polystep_neuro.run.evaluation import score
from polystep_neuro.run.loop_options import Output, Scoring
from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, make_loss
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.params import ParamVector
from polystep_neuro.run.recipe import RunData, check_finished, run_adaptation
from polystep_neuro.run.run_defaults import RunConfig
from simulators import fixed_point

# What the demo adapts on the device: the readout weights.  Lava and Loihi 2 can also
# rewrite the output biases (lif1.v_bias) at run time, but in this network they are of
# little use to the search: the readout's synaptic input is several times its threshold, so
# a bias probe that keeps the neurons sane moves the loss far less than a weight probe, and
# the biases' blocks would only take candidates from the weights.
DEFAULT_WRITABLE = ("fc1.weight",)


@dataclass
class StageSettings:
    """Explicit PolyStep settings for the pretraining stage (radii in subspace units)."""

    steps: int
    rank: int
    step_radius: float
    probe_radius: float
    epsilon: float
    absorb_interval: int = 20
    scaling: str = "none"  # see polystep_neuro.run.params: "auto" scales each tensor by its kind


@dataclass
class DemoConfig:
    backend: str = RunConfig.backend
    torch_device: str = RunConfig.torch_device
    dataset: str = "digits"  # or "mnist5k" (see polystep_neuro.run.data)
    encoding: str = "rate"  # or "latency"
    out_dir: Path = Path("runs/demo")
    seed: int = 0
    hidden: int = 512
    time_steps: int = 25  # T: time steps per sample
    batch_size: int = RunConfig.batch_size
    val_fraction: float = RunConfig.val_fraction  # of the training samples, to validate
    writable: tuple[str, ...] = DEFAULT_WRITABLE
    pretrain: StageSettings = field(default_factory=lambda: StageSettings(1200, 128, 0.5, 1.0, 0.3))
    # 346 steps x 128 candidates = 44,288 parameter sets of 128 samples: the demo's budget
    # (44,400) spent, not 38,400 of it; the bench's full-budget demo row is this run.
    adapt_steps: int = 346
    adapt: Settings = field(default_factory=Settings)  # the recipe's defaults
    shift: Drift = field(  # an InputShift, or a corruption of run/corruptions
        default_factory=lambda: InputShift(noise=0.1, gain=0.6, dead_fraction=0.1, seed=1)
    )
    resume: bool = False
    progress: bool = True
    eval_every: int = RunConfig.eval_every
    checkpoint_every: int = 50

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """Small sizes for tests and smoke runs (about a minute on two CPU cores);
        ``num_steps=`` and ``device=`` still work for one release (renamed ``time_steps=``
        and ``torch_device=``)."""
        for old, new in (("num_steps", "time_steps"), ("device", "torch_device")):
            if old in overrides:
                overrides[new] = renamed(overrides, old, new, None, "DemoConfig.quick")
        cfg = cls(
            hidden=128,
            time_steps=16,
            pretrain=StageSettings(250, 128, 0.5, 1.0, 0.3),
            adapt_steps=150,
        )
        return replace(cfg, **overrides)

    def adaptation(self, torch_device: torch.device) -> RunConfig:
        """The adaptation stage's run (d): the recipe's, with the demo's sizes."""
        out_dir = self.out_dir / "adapt"
        return RunConfig(
            backend=self.backend,
            torch_device=str(torch_device),
            steps=self.adapt_steps,
            batch_size=self.batch_size,
            val_fraction=self.val_fraction,
            writable=self.writable,
            settings=replace(self.adapt, seed=self.seed),
            out_dir=out_dir,
            resume=self.resume and (out_dir / CHECKPOINT_NAME).exists(),
            progress=self.progress,
            eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every,
        )


@dataclass
class DemoData:
    """The digits split, rate-coded: clean and shifted train / validation / test sets."""

    train: SpikeDataset  # everything pretraining learns from (clean)
    adapt_train: dict[str, SpikeDataset]  # the adaptation stream's part of it
    validation: dict[str, SpikeDataset]
    test: dict[str, SpikeDataset]


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


def load_data(cfg: DemoConfig, device: torch.device) -> DemoData:
    """The dataset, clean and shifted; a fixed share of the training samples is held out as
    the adaptation's validation set (pretraining saw their clean versions, adaptation never)."""
    split = load_split(cfg.dataset, cfg.seed)
    kept, held = hold_out(len(split.y_train), cfg.val_fraction, cfg.seed)

    def spikes(x: np.ndarray, y: np.ndarray) -> SpikeDataset:
        trains = encode(x, cfg.time_steps, cfg.encoding)
        return SpikeDataset(trains, y, cfg.batch_size, seed=cfg.seed).to(device)

    def shifted(x: np.ndarray, y: np.ndarray) -> SpikeDataset:
        trains = encode_drifted(x, cfg.time_steps, cfg.encoding, cfg.shift)
        return SpikeDataset(trains, y, cfg.batch_size, seed=cfg.seed).to(device)

    def both(x: np.ndarray, y: np.ndarray) -> dict[str, SpikeDataset]:
        return {"clean": spikes(x, y), "shifted": shifted(x, y)}

    return DemoData(
        train=spikes(split.x_train, split.y_train),
        adapt_train=both(split.x_train[kept], split.y_train[kept]),
        validation=both(split.x_train[held], split.y_train[held]),
        test=both(split.x_test, split.y_test),
    )


def _accuracy(backend: Backend, data: SpikeDataset) -> float:
    """Accuracy of the backend's loaded network (its own values) on all of ``data``."""
    return score(backend, data, make_loss("ce", backend.spec.num_steps)).accuracy


# The fixed random hidden layer must fire for the readout to learn anything: latency coding
# sends one spike per input where rate coding sends many, so at the same weights its hidden
# layer fired on 0.06 % of steps and no output neuron ever spiked (0 % at every stage).  The
# projection is scaled by the smallest of these gains at which it fires on this share of
# steps (digits, 512 hidden: rate coding 12.8 % at gain 1, so the rate demo is unchanged;
# latency 1.4 % at 2, 4.5 % at 4).
HIDDEN_GAINS = (1.0, 2.0, 4.0, 8.0, 16.0)
HIDDEN_FIRING = 0.04


def _random_network(cfg: DemoConfig, n_in: int, gain: float) -> NetworkSpec:
    return NetworkSpec.random(
        [n_in, cfg.hidden, 10], cfg.time_steps, seed=cfg.seed, du=1.0, dv=0.1, vth=1.0,
        weight_gain=gain, writable=("fc1.weight",),
    )  # fmt: skip


def hidden_gain(cfg: DemoConfig, spikes: torch.Tensor) -> tuple[float, float]:
    """(gain, the hidden layer's firing share at it) on up to 256 training samples."""
    from simulators.torch_lif import TorchLIF

    sample = spikes[:256].cpu()
    for gain in HIDDEN_GAINS:
        sim = TorchLIF(_random_network(cfg, int(sample.shape[2]), gain), "float32")
        firing = float(sim.evaluate({}, sample, record=True).spikes[0].float().mean())
        if firing >= HIDDEN_FIRING:
            break
    return gain, firing


def pretrain(
    cfg: DemoConfig, data: DemoData, device: torch.device, gain: float = 1.0
) -> AdaptResult:
    """(a) The readout learned from a random start on the float simulator, no gradients;
    the fixed hidden projection scaled by ``gain`` (:func:`hidden_gain`)."""
    n_in = int(data.train.spikes.shape[2])
    spec = _random_network(cfg, n_in, gain)
    backend = open_backend("torch-sim", device=device)
    backend.load(spec)
    st = cfg.pretrain
    layout = ParamVector(spec, scaling=st.scaling)
    optimizer = PolyStep(
        layout.flatten(spec, device),
        step_radius=st.step_radius,
        probe_radius=st.probe_radius,
        epsilon=st.epsilon,
        subspace=Subspace(sizes=layout.sizes, rank=st.rank, absorb_interval=st.absorb_interval),
        seed=cfg.seed,
    )
    adapter = Adapter(
        spec, backend, optimizer, make_loss("ce", spec.num_steps, scale=COUNT_LOGIT_SCALE),
        data.train, layout=layout,
        scoring=Scoring(test={"clean": data.test["clean"]}, every=cfg.eval_every),
        output=Output(
            cfg.out_dir / "pretrain", cfg.checkpoint_every, cfg.progress, "pretrain"
        ),
    )  # fmt: skip
    if cfg.resume and (cfg.out_dir / "pretrain" / CHECKPOINT_NAME).exists():
        adapter.resume()
    return check_finished(adapter.run(st.steps), cfg.out_dir / "pretrain")


def adapt(
    cfg: DemoConfig, deployed: NetworkSpec, data: DemoData, device: torch.device
) -> AdaptResult:
    """(d) The writable readout adapted on the device by the run recipe, forward passes
    only, on the clean and shifted halves of the stream."""
    stream = concat(
        data.adapt_train["clean"], data.adapt_train["shifted"], cfg.batch_size, cfg.seed + 1
    )
    run_data = RunData(stream, data.validation, data.test, has_clean=True)
    run = run_adaptation(deployed, run_data, cfg.adaptation(device))
    return check_finished(run.result, cfg.out_dir / "adapt")


def run_demo(cfg: DemoConfig, report: Callable[[str], None] = _report_default) -> DemoResult:
    """Run all five stages; raises PolystepError (with a message) on bad settings."""
    from simulators.torch_device import resolve_device

    device = resolve_device(cfg.torch_device)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(cfg, device)
    n_val, n_test = len(data.validation["clean"]), len(data.test["clean"])
    n_in = int(data.train.spikes.shape[2])
    report(
        f"{cfg.dataset}: {len(data.train)} train ({n_val} of them held out for validation "
        f"during adaptation) / {n_test} test samples, {cfg.encoding}-coded over "
        f"{cfg.time_steps} steps; network {n_in} -> {cfg.hidden} -> 10 LIF; device {device}"
    )
    gain, firing = hidden_gain(cfg, data.train.spikes)
    if gain != 1.0:
        report(
            f"{cfg.encoding} coding drives the fixed hidden layer less than rate coding: its "
            f"weights scaled by {gain:g}, so that it fires on {firing:.1%} of steps"
        )
    report(f"(a) pretraining the readout with PolyStep ({cfg.pretrain.steps} steps, no gradients)")
    pre = pretrain(cfg, data, device, gain)
    trained = pre.spec.with_writable(cfg.writable)
    float_sim = open_backend("torch-sim", device=device)
    float_sim.load(trained)
    acc_float = _accuracy(float_sim, data.test["clean"])
    report(f"    float32 test accuracy {acc_float:.1%}  ({pre.wall_seconds:.0f} s)")

    deployed = fixed_point.calibrate(trained)
    fixed_sim = open_backend("torch-sim-fixed", device=device)
    fixed_sim.load(deployed)
    acc_fixed = _accuracy(fixed_sim, data.test["clean"])
    report(
        f"(b) Loihi 2 fixed point: test accuracy {acc_fixed:.1%} "
        f"({100 * (acc_fixed - acc_float):+.1f} points)"
    )
    acc_shift = _accuracy(fixed_sim, data.test["shifted"])
    report(
        f"(c) input shift ({cfg.shift.describe()}): accuracy {acc_shift:.1%} "
        f"({100 * (acc_shift - acc_fixed):+.1f} points)"
    )
    report(
        f"(d) adapting {', '.join(cfg.writable)} on {cfg.backend} with "
        f"{cfg.adapt.optimizer}, forward passes only"
    )
    adapted = adapt(cfg, deployed, data, device)
    report(f"    {adapted.summary()}  ({adapted.wall_seconds:.0f} s)")
    accuracies = {
        "float32 pretrained": acc_float,
        "Loihi 2 fixed point": acc_fixed,
        "after input shift": acc_shift,
        "adapted (shifted)": adapted.end["shifted_accuracy"],
        "adapted (clean)": adapted.end["clean_accuracy"],
    }
    walls = {"pretrain": pre.wall_seconds, "adapt": adapted.wall_seconds}
    walls["total"] = time.perf_counter() - t0
    return _finish(cfg, report, device, pre, adapted, accuracies, walls)


def recovered(accuracies: dict[str, float]) -> float:
    """The share of the accuracy the shift took that adaptation gave back."""
    lost = accuracies["Loihi 2 fixed point"] - accuracies["after input shift"]
    gained = accuracies["adapted (shifted)"] - accuracies["after input shift"]
    return gained / lost if lost > 0 else float("nan")


def _recovered_words(share: float) -> str:
    """The share said so that 212 % or nan % (an underfit --quick network; a shift that
    cost nothing) do not read as a bug."""
    if not math.isfinite(share):
        return "adaptation: the shift cost no accuracy here, so there is no share to recover"
    words = f"adaptation recovered {share:.0%} of the accuracy the shift took"
    if share > 1:
        words += (" (more than it took: the adaptation's data also taught the network what "
                  "pretraining had not)")  # fmt: skip
    return words


def _finish(
    cfg: DemoConfig,
    report: Callable[[str], None],
    device: torch.device,
    pre: AdaptResult,
    adapted: AdaptResult,
    accuracies: dict[str, float],
    walls: dict[str, float],
) -> DemoResult:
    """(e) The table, the figure, summary.json and the adapted network."""
    share = recovered(accuracies)
    report("")
    report("| stage | test accuracy |")
    report("|---|---|")
    for name, value in accuracies.items():
        report(f"| {name} | {value:.1%} |")
    clean_change = accuracies["adapted (clean)"] - accuracies["Loihi 2 fixed point"]
    # A resumed demo's stage times carry the interrupted run's seconds; its total does not.
    total = f"total {walls['total']:.0f} s"
    if cfg.resume:
        total += " in this run (the stage times above include the run it resumed)"
    report(f"{_recovered_words(share)}; clean accuracy {100 * clean_change:+.1f} points; {total}")
    figure = cfg.out_dir / "demo.png"
    plots.demo_figure(figure, pre.history, adapted.history, accuracies)
    summary = {
        "accuracies": accuracies,
        "recovered_fraction": share,
        "adaptation": {
            "start": adapted.start,
            "end": adapted.end,
            "best_step": adapted.best_step,
            "kept_start": adapted.kept_start,
            "summary": adapted.summary(),
        },
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
    return DemoResult(accuracies, share, walls, cfg.out_dir, pre, adapted, adapted.spec)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
