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
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.controller import Adapter
from polystep_neuro.run.data import (
    InputShift,
    SpikeDataset,
    Split,
    concat,
    load_digits_split,
    rate_encode,
)
from polystep_neuro.run.losses import accuracy
from polystep_neuro.run.optimizers import Settings


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
    """The adaptation recipe (``Adapter.build``: probe sizes from each tensor's magnitude and
    the device's resolution, PolyStep's defaults) over ``spec``'s writable parameters, on a
    stream of clean and shifted samples (so that clean accuracy holds).  A fifth of the
    training samples is held out, clean and shifted, as the validation set that decides
    which network is handed back; the test sets are only reported."""
    y_train, y_test = data.split.y_train, data.split.y_test
    cut = int(0.8 * len(y_train))

    def ds(spikes: np.ndarray, labels: np.ndarray) -> SpikeDataset:
        return SpikeDataset(spikes, labels, args.batch_size, args.seed)

    stream = concat(
        ds(data.train[:cut], y_train[:cut]),
        ds(data.shifted_train[:cut], y_train[:cut]),
        args.batch_size,
        args.seed,
    )
    validation = {
        "clean": ds(data.train[cut:], y_train[cut:]),
        "shifted": ds(data.shifted_train[cut:], y_train[cut:]),
    }
    test, shifted_test = ds(data.test, y_test), ds(data.shifted_test, y_test)
    adapter = Adapter.build(
        backend,
        stream,
        steps=args.steps,
        settings=Settings(rank=args.rank, seed=args.seed),
        validation=validation,
        test={"clean": test, "shifted": shifted_test},
        eval_every=10,
        progress=not args.no_progress,
    )
    return DigitsAdaptation(adapter, test, shifted_test)


def adapt_and_score(run: DigitsAdaptation, steps: int, where: str) -> dict[str, Any]:
    """The hardware-in-the-loop loop (ask -> forward passes on the device -> loss -> tell) for
    ``steps`` steps; accuracies of the start and of the network handed back; prints."""
    adapter = run.adapter
    print(
        f"adapting {', '.join(adapter.layout.names)} ({adapter.layout.dim} values) on {where}: "
        f"{adapter.optimizer.num_candidates} candidates x {adapter.train.batch_size} "
        "samples per step"
    )
    result = adapter.run(steps)
    print(result.summary())
    print(
        f"{result.steps} steps, {result.evaluations:,} single-sample forward passes, "
        f"{result.wall_seconds:.0f} s"
    )
    return {
        "before_clean": result.start["clean_accuracy"],
        "before_shifted": result.start["shifted_accuracy"],
        "after_clean": result.end["clean_accuracy"],
        "after_shifted": result.end["shifted_accuracy"],
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
