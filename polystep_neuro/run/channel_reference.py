"""The input side of the drift test: each input channel's rate in a batch, against the rate
the reference says the batch's own classes give it.

A batch's channel rates move with its class mix (a stretch of mostly one digit is no sensor
drift, and adapting to it costs accuracy), so the reference keeps, per class the deployed
network predicts, each channel's mean rate per sample and its spread; a batch is compared
with the rates its predicted classes imply.  A channel stuck on or off, a hot pixel or a
sensor that lost gain moves its rate whatever the classes.  The spread of that comparison
is the within-class spread over the batch's samples, widened per channel by how much more
the reference batches themselves strayed (samples that come in runs), with a floor of one
sample's worth so that a channel the reference rarely saw fire is not flagged for the one
sample that lights it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# A class's mean is shrunk towards the all-class mean by this many samples' worth, so a
# class the network rarely predicts in the reference does not set a rate from a handful.
_PRIOR = 10.0


def sample_rates(spikes: np.ndarray) -> np.ndarray:
    """(B, T, N_in) input spikes -> (B, N_in): each sample's mean value per channel."""
    return np.asarray(spikes, dtype=np.float64).mean(axis=1)


@dataclass
class ChannelReference:
    """Per predicted class, the sums of each channel's per-sample rate and of its square
    over the reference batches; and, until the reference is complete, each batch's mean
    rates and class counts (to measure how far batches stray beyond the samples' spread)."""

    classes: int = 0
    counts: np.ndarray | None = None  # (K,)
    sums: np.ndarray | None = None  # (K, N)
    squares: np.ndarray | None = None  # (K, N)
    batches: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    widen: np.ndarray | None = None  # (N,) set when the reference is complete
    widen_sum: float = 1.0  # the same for the sum over the channels
    # the per-class means, variances and counts + prior the sums give, once they are final
    _stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def batches_seen(self) -> int:
        """Reference batches added and not yet folded in by :meth:`complete`."""
        return len(self.batches)

    def add(self, rates: np.ndarray, predicted: np.ndarray, classes: int) -> None:
        """One reference batch: (B, N) sample rates and the (B,) classes predicted."""
        if self.counts is None:
            n = rates.shape[1]
            self.classes = int(classes)
            self.counts = np.zeros(self.classes)
            self.sums, self.squares = np.zeros((self.classes, n)), np.zeros((self.classes, n))
        assert self.sums is not None and self.squares is not None
        np.add.at(self.counts, predicted, 1.0)
        np.add.at(self.sums, predicted, rates)
        np.add.at(self.squares, predicted, rates * rates)
        self.batches.append((rates.mean(axis=0), np.bincount(predicted, minlength=self.classes)))

    def complete(self) -> None:
        """The reference is in: measure each channel's overdispersion, and that of the sum
        over the channels (channels fire together), on the reference's own batches."""
        self._stats = self._class_stats()
        ratios, sums = [], []
        for observed, mix in self.batches:
            expected, variance = self._expected(mix)
            ratios.append((observed - expected) ** 2 / variance)
            sums.append((observed - expected).sum() ** 2 / variance.sum())
        self.widen = np.maximum(np.mean(ratios, axis=0), 1.0)
        self.widen_sum = max(float(np.mean(sums)), 1.0)
        self.batches = []

    def _class_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per class: each channel's mean rate per sample and its variance (both shrunk
        towards the all-class ones by ``_PRIOR`` samples), and the class's samples + prior."""
        assert self.counts is not None and self.sums is not None and self.squares is not None
        total = self.counts.sum()
        overall = self.sums.sum(axis=0) / total
        overall_var = np.maximum(self.squares.sum(axis=0) / total - overall**2, 0.0)
        n = self.counts[:, None]
        means = (self.sums + _PRIOR * overall) / (n + _PRIOR)
        within = self.squares - self.sums**2 / np.maximum(n, 1.0)  # sums of squared deviations
        variances = (np.maximum(within, 0.0) + _PRIOR * overall_var) / (n + _PRIOR)
        return means, variances, n + _PRIOR

    def _expected(self, mix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean rate per channel a batch of class counts ``mix`` should have, and the
        variance of its batch mean (within-class spread plus the class means' own error)."""
        assert self._stats is not None
        means, variances, weight = self._stats
        size = mix.sum()
        share = mix / size
        expected = share @ means
        variance = (mix @ variances) / size**2 + (share**2) @ (variances / weight)
        # the floor: one sample's worth (a sample firing in every step moves a batch's mean
        # rate by 1 / size); one spike's worth flagged a rare pixel one sample lit up
        return expected, variance + (1.0 / size) ** 2

    def z(self, rates: np.ndarray, predicted: np.ndarray) -> tuple[float, int | None]:
        """The largest |z| over the channels and its channel, or the z of their sum (None:
        a small shift of every channel, background spikes or a gain, shows there first);
        nan for another width."""
        if self.widen is None or self.sums is None or rates.shape[1] != self.sums.shape[1]:
            return float("nan"), None
        mix = np.bincount(predicted, minlength=self.classes)[: self.classes]
        expected, variance = self._expected(mix)
        residual = rates.mean(axis=0) - expected
        z = np.abs(residual) / np.sqrt(variance * self.widen)
        z_sum = abs(float(residual.sum())) / float(np.sqrt(variance.sum() * self.widen_sum))
        return (z_sum, None) if z_sum > z.max() else (float(z.max()), int(z.argmax()))

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`from_arrays` reads back (an .npz beside the watcher's state: the
        sums are classes x channels, too many numbers to rewrite as text every batch)."""
        if self.counts is None or self.sums is None or self.squares is None:
            return {}
        width = self.sums.shape[1]
        return {
            "classes": np.array(self.classes),
            "counts": self.counts, "sums": self.sums, "squares": self.squares,
            "batch_rates": np.array([o for o, _ in self.batches]).reshape(-1, width),
            "batch_mixes": np.array([m for _, m in self.batches]).reshape(-1, self.classes),
            "widen": np.zeros(0) if self.widen is None else self.widen,
            "widen_sum": np.array(self.widen_sum),
        }  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ChannelReference:
        if "counts" not in arrays:  # none yet, or a watch started before the input test
            return cls()
        widen = np.asarray(arrays["widen"], dtype=np.float64)
        batches = list(zip(np.asarray(arrays["batch_rates"], dtype=np.float64),
                           np.asarray(arrays["batch_mixes"]), strict=True))  # fmt: skip
        reference = cls(
            int(arrays["classes"]),
            np.asarray(arrays["counts"], dtype=np.float64),
            np.asarray(arrays["sums"], dtype=np.float64),
            np.asarray(arrays["squares"], dtype=np.float64),
            batches,
            widen if widen.size else None,
            float(arrays["widen_sum"]),
        )
        if reference.widen is not None:  # complete: its statistics are final
            reference._stats = reference._class_stats()
        return reference
