"""Has the input drifted?  A test on the deployed network's outputs and on its input
channels, batch by batch.

The output statistics are those of the network *as deployed* (the start, evaluated beside
whatever the watcher serves), so what the detector compares never moves with adaptation.
Per batch, three features that do not depend on which classes the batch happens to hold:
the mean output firing rate, the mean entropy of the predicted class distribution and the
mean confidence (largest class probability).  Their mean and spread over the reference
batches (clean data) give each new batch a z-score per feature.  The input side
(:mod:`~polystep_neuro.run.channel_reference`): each input channel's rate against the rate
the batch's predicted classes imply, so a channel stuck on or off, a hot pixel or a lost
gain shows long before it moves the outputs much (a stuck channel and a timing shift took
a network from 89 to 34 % with the output statistics at 3.4 spreads), while a batch that
only holds other classes than usual does not.  A batch is *out of range* when any |z|
exceeds ``z_limit``.  Drift is declared when at least ``votes`` of the last ``window``
batches are out of range, and cleared when ``window`` batches in a row are in range again.
The false-alarm rate of these settings on clean streams, and on streams whose class mix
shifts, is measured in docs/benchmarks.md (the stream watcher section); a single odd batch
never raises an alarm.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.channel_reference import ChannelReference, sample_rates

FEATURES = ("output rate", "entropy", "confidence")
_SCALE = 0.5  # count logits, as everywhere in the tool (losses.COUNT_LOGIT_SCALE)


def batch_features(counts: np.ndarray, time_steps: int) -> np.ndarray:
    """(B, C) output spike counts -> the three features of :data:`FEATURES`."""
    counts = np.asarray(counts, dtype=np.float64)
    logits = counts * _SCALE
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    rate = counts.sum(axis=1) / (time_steps * counts.shape[1])
    return np.array([rate.mean(), entropy.mean(), p.max(axis=1).mean()])


@dataclass
class DetectorSettings:
    reference_batches: int = 50  # clean batches the reference statistics come from
    z_limit: float = 5.0  # a batch is out of range beyond this many reference spreads
    window: int = 5  # drift: `votes` of the last `window` batches out of range
    votes: int = 3

    def __post_init__(self) -> None:
        if self.reference_batches < 5:
            raise PolystepError("the reference needs at least 5 batches")
        if not (self.z_limit > 0 and np.isfinite(self.z_limit)):
            raise PolystepError(f"z_limit must be a positive number, got {self.z_limit}")
        if not 1 <= self.votes <= self.window:
            raise PolystepError(f"votes must be in 1..window ({self.window}), got {self.votes}")


@dataclass
class Observation:
    z: float  # the batch's largest |z| over the features (nan while the reference fills)
    out_of_range: bool
    change: str | None  # "drift", "cleared" or None
    where: str = ""  # what that largest |z| is of: an output feature or an input channel


@dataclass(frozen=True)
class InputBatch:
    """What the input test reads of a batch: (B, N_in) per-sample channel rates
    (:func:`sample_rates`), the (B,) classes the deployed network predicts of ``classes``."""

    rates: np.ndarray
    predicted: np.ndarray
    classes: int

    @classmethod
    def of(cls, spikes: np.ndarray, counts: np.ndarray) -> InputBatch:
        """From (B, T, N_in) spikes and the deployed network's (B, C) output counts."""
        counts = np.asarray(counts)
        return cls(sample_rates(spikes), counts.argmax(axis=1), counts.shape[1])


@dataclass
class DriftDetector:
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    reference: list[list[float]] = field(default_factory=list)
    recent: deque = field(default_factory=deque)
    drifted: bool = False
    in_range_run: int = 0
    # the input side's reference; saved apart from state_dict (ChannelReference.arrays)
    channels: ChannelReference = field(default_factory=ChannelReference)

    @property
    def ready(self) -> bool:
        return len(self.reference) >= self.settings.reference_batches

    def _z(self, features: np.ndarray) -> tuple[float, str]:
        ref = np.asarray(self.reference)
        spread = ref.std(axis=0, ddof=1)
        spread = np.maximum(spread, 1e-3 * np.maximum(np.abs(ref.mean(axis=0)), 1e-6))
        z = np.abs((features - ref.mean(axis=0)) / spread)
        return float(z.max()), FEATURES[int(z.argmax())]

    def observe(self, features: np.ndarray, inputs: InputBatch | None = None) -> Observation:
        """One batch's output features and, given, its inputs: filling the reference
        first, then testing."""
        if not self.ready:
            self.reference.append([float(f) for f in features])
            if inputs is not None and len(self.reference) == self.channels.batches_seen + 1:
                self.channels.add(inputs.rates, inputs.predicted, inputs.classes)
                if self.ready:
                    self.channels.complete()
            return Observation(float("nan"), False, None)
        z, where = self._z(features)
        if inputs is not None and self.channels.widen is not None:
            z_in, channel = self.channels.z(inputs.rates, inputs.predicted)
            if z_in > z:
                where = "all input channels" if channel is None else f"input channel {channel}"
                z = z_in
        out = z > self.settings.z_limit
        self.recent.append(out)
        while len(self.recent) > self.settings.window:
            self.recent.popleft()
        self.in_range_run = 0 if out else self.in_range_run + 1
        change = None
        if not self.drifted and sum(self.recent) >= self.settings.votes:
            self.drifted, change = True, "drift"
        elif self.drifted and self.in_range_run >= self.settings.window:
            self.drifted, change = False, "cleared"
            self.recent.clear()
        return Observation(z, out, change, where)

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "recent": list(self.recent),
            "drifted": self.drifted,
            "in_range_run": self.in_range_run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = [list(map(float, r)) for r in state["reference"]]
        self.recent = deque(bool(v) for v in state["recent"])
        self.drifted = bool(state["drifted"])
        self.in_range_run = int(state["in_range_run"])
