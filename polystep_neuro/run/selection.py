"""Which network a run hands back, decided on validation, so that it is never less accurate
on validation than the network the run started from.

The current point is handed back when it was scored at least as accurate on validation as
the start (or there is no validation set): the end of a run is usually its best point, and a
pick among a few hundred noisy validation samples is noisier still.  Otherwise the point with
the lowest validation loss among those at least as accurate as the start (the loss, being
less noisy than the accuracy of a few hundred samples, picks among them) — the start itself,
bit for bit, when there is none.

Without labels (an unlabelled validation set) the accuracy is unknown, so the validation
loss, the label-free objective on held-out data, stands in for it: a point qualifies when
its objective is lower than the start's by at least ``PROXY_MARGIN``, the current point is
handed back when it qualifies, else the qualifying point with the lowest objective, else
the start.  The margin is the rollback: a run whose objective barely moved has not shown it
helped, and the start is handed back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

# Below this many samples one sample moves a validation accuracy by more than 3 points, too
# coarse to choose between networks: a run says so (it still runs).
FEW_VALIDATION_SAMPLES = 30


def few_samples_note(name: str, samples: int) -> str | None:
    """One line when validation set ``name`` is too small to choose what is handed back."""
    if samples >= FEW_VALIDATION_SAMPLES:
        return None
    return (
        f"validation {name!r} holds {samples} samples: one sample moves its accuracy by "
        f"{100 / max(samples, 1):.0f} points, too coarse to tell networks apart; give more "
        "data (a fifth of it validates) or a validation set of its own"
    )


# How much lower than the start's the label-free objective on validation must be before a
# point counts as better (docs/benchmarks.md, label-free section, chose it).
PROXY_MARGIN = 0.01


class Selection:
    """The best point seen on validation (see the module docstring); ``enabled=False`` (no
    validation set, or ``keep_best=False``) always hands back the current point;
    ``label_free=True`` decides on the validation objective alone."""

    def __init__(self, start: torch.Tensor, enabled: bool, label_free: bool = False) -> None:
        self.enabled = enabled
        self.label_free = label_free
        # (-mean validation loss, mean validation accuracy) of the best point, its
        # parameters and step; ``floor`` is the start's validation accuracy (label-free:
        # its validation objective).
        self.best_key: tuple[float, float] | None = None
        self.floor = 0.0
        self.best_x = start.detach().clone()
        self.best_step = 0

    def _qualifies(self, scores: Mapping[str, float]) -> bool:
        if self.label_free:
            return scores["val_loss"] <= self.floor - PROXY_MARGIN
        return scores["val_accuracy"] >= self.floor

    def consider(self, x: torch.Tensor, step: int, scores: Mapping[str, float]) -> None:
        """Keep ``x`` if its validation loss is the lowest so far among the points that beat
        the start's (the first point considered is the start)."""
        if "val_loss" not in scores:
            return
        accuracy = 0.0 if self.label_free else scores["val_accuracy"]
        key = (-scores["val_loss"], accuracy)
        if self.best_key is None:
            self.best_key, self.best_x, self.best_step = key, x.detach().clone(), step
            self.floor = scores["val_loss"] if self.label_free else accuracy
        elif self._qualifies(scores) and key > self.best_key:
            self.best_key, self.best_x, self.best_step = key, x.detach().clone(), step

    def choice(
        self, step: int, x: torch.Tensor, history: Sequence[Mapping[str, Any]]
    ) -> tuple[int, torch.Tensor]:
        """(step, parameters) to hand back, given the current ``step`` and point ``x``."""
        if not self.enabled:
            return step, x
        for record in reversed(history):
            if record["step"] == step and "val_loss" in record:
                if self._qualifies(record):
                    return step, x
                break
        return self.best_step, self.best_x.clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_x": self.best_x.clone(),
            "best_step": self.best_step,
            "best_key": None if self.best_key is None else list(self.best_key),
            "floor": self.floor,
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.best_x = state["best_x"].to(device)
        self.best_step = int(state["best_step"])
        key = state["best_key"]
        self.best_key = None if key is None else (float(key[0]), float(key[1]))
        self.floor = float(state["floor"])
