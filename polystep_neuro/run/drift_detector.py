"""Has the input drifted?  A test on the deployed network's own outputs, batch by batch.

The statistics are those of the network *as deployed* (the start, evaluated beside whatever
the watcher serves), so what the detector compares never moves with adaptation.  Per batch,
three features that do not depend on which classes the batch happens to hold: the mean
output firing rate, the mean entropy of the predicted class distribution and the mean
confidence (largest class probability).  Their mean and spread over the reference batches
(clean data) give each new batch a z-score per feature; a batch is *out of range* when any
feature's |z| exceeds ``z_limit``.  Drift is declared when at least ``votes`` of the last
``window`` batches are out of range, and cleared when ``window`` batches in a row are in
range again.  The false-alarm rate of these settings on clean streams is measured in
docs/benchmarks.md (the stream watcher section); a single odd batch never raises an alarm.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polystep_neuro.core.errors import PolystepError

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


@dataclass
class DriftDetector:
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    reference: list[list[float]] = field(default_factory=list)
    recent: deque = field(default_factory=deque)
    drifted: bool = False
    in_range_run: int = 0

    @property
    def ready(self) -> bool:
        return len(self.reference) >= self.settings.reference_batches

    def _z(self, features: np.ndarray) -> float:
        ref = np.asarray(self.reference)
        spread = ref.std(axis=0, ddof=1)
        spread = np.maximum(spread, 1e-3 * np.maximum(np.abs(ref.mean(axis=0)), 1e-6))
        return float(np.max(np.abs((features - ref.mean(axis=0)) / spread)))

    def observe(self, features: np.ndarray) -> Observation:
        """One batch's features: filling the reference first, then testing."""
        if not self.ready:
            self.reference.append([float(f) for f in features])
            return Observation(float("nan"), False, None)
        z = self._z(features)
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
        return Observation(z, out, change)

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
