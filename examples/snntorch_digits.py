"""Shared by examples 02 and 03: digits as spike trains, a tiny snnTorch model trained with
backpropagation through time (BPTT), and the PolyStep adaptation both examples run.

The first part is the offline story, the one you would do in snnTorch before deployment;
``digits_adaptation`` / ``adapt_and_score`` are the on-device part, the same on every backend.
It is a helper module, not an example to run on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import snntorch as snn
import torch
from snntorch import utils as snn_utils
from torch import nn

from devices.base import BaseBackend
from polystep_neuro.controller import Adapter
from polystep_neuro.data import (
    InputShift,
    SpikeDataset,
    Split,
    concat,
    load_digits_split,
    rate_encode,
)
from polystep_neuro.losses import accuracy, make_loss
from polystep_neuro.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.params import ParamVector


@dataclass
class DigitsSpikes:
    """Rate-coded digits, clean and shifted: spike trains (n, T, 64) uint8, labels (n,)."""

    split: Split
    num_steps: int
    shift: InputShift
    train: np.ndarray
    test: np.ndarray
    shifted_train: np.ndarray
    shifted_test: np.ndarray


def digits_spikes(num_steps: int, shift: InputShift, seed: int = 0) -> DigitsSpikes:
    """scikit-learn's bundled digits (no download), as regular spike trains over ``num_steps``.

    ``shift`` models the drift a deployed sensor shows (noise, gain loss, dead pixels); it is
    applied to the intensities before encoding.
    """
    split = load_digits_split(seed)
    return DigitsSpikes(
        split=split,
        num_steps=num_steps,
        shift=shift,
        train=rate_encode(split.x_train, num_steps),
        test=rate_encode(split.x_test, num_steps),
        shifted_train=rate_encode(shift(split.x_train), num_steps),
        shifted_test=rate_encode(shift(split.x_test), num_steps),
    )


def make_model(hidden: int, beta: float = 0.9, seed: int = 0) -> nn.Sequential:
    """64 -> hidden -> 10, each nn.Linear followed by an snn.Leaky neuron.

    ``reset_mechanism="zero", reset_delay=False``: Loihi 2 neurons reset to zero in the
    step they spike, so training with that reset keeps the deployed network close to the
    trained one (snnTorch's defaults are "subtract" and a reset one step later).
    """
    torch.manual_seed(seed)
    common = {
        "beta": beta,
        "threshold": 1.0,
        "reset_mechanism": "zero",
        "reset_delay": False,
        "init_hidden": True,
    }
    return nn.Sequential(
        nn.Linear(64, hidden),
        snn.Leaky(**common),
        nn.Linear(hidden, 10),
        snn.Leaky(**common, output=True),
    )


def spike_counts(model: nn.Sequential, spikes: torch.Tensor) -> torch.Tensor:
    """Output spike counts (B, 10) of ``model`` on spike trains (B, T, 64), with gradients."""
    snn_utils.reset(model)
    total = 0
    for t in range(spikes.shape[1]):
        out, _ = model(spikes[:, t])
        total = total + out
    return total


def train_bptt(
    model: nn.Sequential,
    spikes: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Train with BPTT (snnTorch's surrogate gradient) and cross-entropy on spike counts.

    Returns the wall time in seconds.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    x = torch.as_tensor(spikes, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for first in range(0, len(y), batch_size):
            idx = order[first : first + batch_size]
            counts = spike_counts(model, x[idx])
            loss = nn.functional.cross_entropy(counts * 0.5, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def snntorch_accuracy(model: nn.Sequential, spikes: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the snnTorch model itself (ties count as wrong, as in polystep_neuro)."""
    with torch.no_grad():
        counts = spike_counts(model, torch.as_tensor(spikes, dtype=torch.float32))
    return float(accuracy(counts[None], torch.as_tensor(labels))[0])


def train_offline(args: Any, data: DigitsSpikes) -> tuple[nn.Sequential, float]:
    """Step 1 of examples 02 and 03: BPTT training in snnTorch (gradients are fine here:
    this is not the device); prints and returns the model and its test accuracy."""
    model = make_model(args.hidden, seed=args.seed)
    y_train, y_test = data.split.y_train, data.split.y_test
    seconds = train_bptt(model, data.train, y_train, epochs=args.epochs, seed=args.seed)
    acc = snntorch_accuracy(model, data.test, y_test)
    print(
        f"snnTorch 64-{args.hidden}-10, {args.epochs} BPTT epochs ({seconds:.0f} s): "
        f"test accuracy {acc:.1%}"
    )
    return model, acc


@dataclass
class DigitsAdaptation:
    """An Adapter over a spec's writable parameters and the two test sets it is scored on."""

    adapter: Adapter
    test: SpikeDataset
    shifted_test: SpikeDataset


def digits_adaptation(
    spec: NetworkSpec, backend: BaseBackend, data: DigitsSpikes, args: Any
) -> DigitsAdaptation:
    """PolyStep over ``spec``'s writable parameters, on a stream of clean and shifted samples
    (so that clean accuracy holds), monitoring the shifted test set.

    ``scaling="auto"`` measures every tensor in units of its typical size (biases: 5 % of the
    threshold), so one step radius fits all; a tensor larger than ``args.rank`` is searched
    in a random subspace of that rank."""
    y_train, y_test = data.split.y_train, data.split.y_test
    layout = ParamVector(spec, scaling="auto")
    optimizer = PolyStep(
        layout.flatten(spec),
        step_radius=0.3,
        probe_radius=0.6,
        epsilon=0.3,
        subspace=Subspace(sizes=layout.sizes, rank=args.rank, absorb_interval=20),
        seed=args.seed,
    )
    mixed = concat(
        SpikeDataset(data.train, y_train, args.batch_size),
        SpikeDataset(data.shifted_train, y_train, args.batch_size),
        args.batch_size,
        args.seed,
    )
    shifted_test = SpikeDataset(data.shifted_test, y_test, len(y_test))
    adapter = Adapter(
        spec,
        backend,
        optimizer,
        make_loss("ce", args.num_steps, scale=0.5),
        mixed,
        monitor=shifted_test,
        eval_every=20,
        progress=not args.no_progress,
        layout=layout,
    )
    return DigitsAdaptation(adapter, SpikeDataset(data.test, y_test, len(y_test)), shifted_test)


def adapt_and_score(run: DigitsAdaptation, steps: int, where: str) -> dict[str, Any]:
    """Accuracies before, the hardware-in-the-loop loop (ask -> forward passes on the device
    -> loss -> tell) for ``steps`` steps, accuracies after; prints as it goes."""
    adapter = run.adapter

    def scores() -> tuple[float, float]:
        clean = adapter.evaluate_current(run.test)["monitor_accuracy"]
        return clean, adapter.evaluate_current(run.shifted_test)["monitor_accuracy"]

    before_clean, before_shifted = scores()
    print(f"{where}, before adaptation: clean {before_clean:.1%}, shifted {before_shifted:.1%}")
    print(
        f"adapting {', '.join(adapter.layout.names)} ({adapter.layout.dim} values) on {where}: "
        f"{adapter.optimizer.num_candidates} candidates x {run.adapter.train.batch_size} "
        "samples per step"
    )
    result = adapter.run(steps)
    after_clean, after_shifted = scores()
    print(
        f"{result.steps} steps, {result.evaluations:,} forward passes, {result.wall_seconds:.0f} s"
    )
    return {
        "before_clean": before_clean,
        "before_shifted": before_shifted,
        "after_clean": after_clean,
        "after_shifted": after_shifted,
        "steps": result.steps,
        "evaluations": result.evaluations,
        "adapted_spec": result.spec,
    }


def print_table(snntorch_clean: float, scores: dict[str, Any], where: str) -> None:
    print("| network | clean test | shifted test |")
    print("|---|---|---|")
    print(f"| snnTorch model | {snntorch_clean:.1%} | |")
    before = f"{scores['before_clean']:.1%} | {scores['before_shifted']:.1%}"
    print(f"| on {where}, before adaptation | {before} |")
    print(f"| adapted on {where} | {scores['after_clean']:.1%} | {scores['after_shifted']:.1%} |")
