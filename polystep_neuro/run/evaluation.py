"""Accuracy and loss of a network on labelled spike data, through any backend.

The one place that turns "this backend, these parameters, this data" into numbers, so the
controller, the demo, the CLI and the API all report the same thing the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.losses import LossFn, accuracy

# Samples per evaluate call: bounds the device memory of one evaluation of a large set.
EVAL_CHUNK = 1024


@dataclass(frozen=True)
class Score:
    """Accuracy (fraction) and mean loss of one parameter set on one dataset."""

    accuracy: float
    loss: float


def counts_of(backend: Any, data: SpikeDataset, params: Mapping[str, Any] | None = None):
    """Spike counts ``(V, n, C)`` of ``params`` (``None``: the loaded values) on all of ``data``,
    evaluated in chunks of :data:`EVAL_CHUNK` samples."""
    params = dict(params or {})
    parts = []
    for start in range(0, len(data), EVAL_CHUNK):
        chunk = data.spikes[start : start + EVAL_CHUNK]
        parts.append(torch.as_tensor(backend.evaluate(params, chunk)))
    return torch.cat(parts, dim=1)


def score(
    backend: Any,
    data: SpikeDataset,
    loss: LossFn,
    params: Mapping[str, Any] | None = None,
) -> Score:
    """Accuracy and loss of one parameter set (``None``: the loaded network) on ``data``;
    on unlabelled data the accuracy is NaN (unknown) and the loss is what ``loss`` makes of
    the counts alone (a label-free objective)."""
    counts = counts_of(backend, data, params)
    labels = data.labels.to(counts.device)
    known = float(accuracy(counts, labels)[0]) if data.labelled else math.nan
    return Score(known, float(loss(counts, labels)[0]))


def score_sets(
    backend: Any,
    sets: Mapping[str, SpikeDataset],
    loss: LossFn,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Score]:
    """:func:`score` on every named dataset."""
    return {name: score(backend, data, loss, params) for name, data in sets.items()}


def flat_scores(
    backend: Any,
    loss: LossFn,
    params: Mapping[str, Any],
    validation: Mapping[str, SpikeDataset],
    test: Mapping[str, SpikeDataset],
) -> dict[str, float]:
    """The metrics of one parameter set as a flat record: ``val_accuracy`` / ``val_loss``
    (means over the validation sets), then ``val_NAME_*`` (with more than one validation
    set) and ``NAME_*`` per test set."""
    out: dict[str, float] = {}
    val = score_sets(backend, validation, loss, params)
    if val:
        known = [s.accuracy for s in val.values() if not math.isnan(s.accuracy)]
        if len(known) == len(val):  # an unlabelled set has no accuracy to average
            out["val_accuracy"] = sum(known) / len(known)
        out["val_loss"] = sum(s.loss for s in val.values()) / len(val)
        out.update(_flat(val, "val_") if len(val) > 1 else {})
    out.update(_flat(score_sets(backend, test, loss, params)))
    return out


def _flat(scores: Mapping[str, Score], prefix: str = "") -> dict[str, float]:
    """``NAME_accuracy`` (labelled sets only) and ``NAME_loss`` per set."""
    out: dict[str, float] = {}
    for name, sc in scores.items():
        if not math.isnan(sc.accuracy):
            out[f"{prefix}{name}_accuracy"] = sc.accuracy
        out[f"{prefix}{name}_loss"] = sc.loss
    return out
