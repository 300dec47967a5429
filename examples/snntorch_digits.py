"""Shared by examples 02 and 03: digits as spike trains, and a tiny snnTorch model trained
with backpropagation through time (BPTT).

This is the offline part of the story, the one you would do in snnTorch before deployment:
nothing here uses polystep-neuro's optimiser or devices.  It is a helper module, not an
example to run on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import snntorch as snn
import torch
from snntorch import utils as snn_utils
from torch import nn

from polystep_neuro.data import InputShift, Split, load_digits_split, rate_encode
from polystep_neuro.losses import accuracy


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
