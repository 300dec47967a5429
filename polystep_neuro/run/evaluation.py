"""Accuracy and loss of a network on labelled spike data, through any backend.

The one place that turns "this backend, these parameters, this data" into numbers, so the
controller, the demo, the CLI and the API all report the same thing the same way.
"""

from __future__ import annotations

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
    """Accuracy and loss of one parameter set (``None``: the loaded network) on ``data``."""
    counts = counts_of(backend, data, params)
    labels = data.labels.to(counts.device)
    return Score(float(accuracy(counts, labels)[0]), float(loss(counts, labels)[0]))


def score_sets(
    backend: Any,
    sets: Mapping[str, SpikeDataset],
    loss: LossFn,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Score]:
    """:func:`score` on every named dataset."""
    return {name: score(backend, data, loss, params) for name, data in sets.items()}
