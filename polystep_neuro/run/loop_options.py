"""The adaptation loop's options, in three small groups, each checked where it is made.

- :class:`Scoring`: what is scored along the way and whether validation picks the network
  handed back;
- :class:`Regularization`: what holds the run near its start (the anchor, the trust region);
- :class:`Output`: where the run writes (checkpoints, metrics log) and what it shows.

:func:`group_options` sorts the flat keywords of ``Adapter.build`` (``validation=``,
``anchor_weight=``, ``out_dir=``, ...) into these groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.data import SpikeDataset

EVAL_EVERY = 10  # steps between scorings on validation and test
CHECKPOINT_EVERY = 25  # steps between checkpoints (0: only at the end)


@dataclass(frozen=True)
class Scoring:
    """``validation`` (named datasets) decides what is handed back when ``keep_best``: every
    ``every`` steps and at the last step the current point is scored on it.  ``test`` sets
    are scored at the same points and never influence what is kept."""

    validation: Mapping[str, SpikeDataset] = field(default_factory=dict)
    test: Mapping[str, SpikeDataset] = field(default_factory=dict)
    every: int = EVAL_EVERY
    keep_best: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation", dict(self.validation or {}))
        object.__setattr__(self, "test", dict(self.test or {}))
        object.__setattr__(self, "every", int(self.every))

    @property
    def validated(self) -> bool:
        return bool(self.validation) and self.keep_best

    @property
    def label_free(self) -> bool:
        """Some validation set has no labels: the validation objective decides alone."""
        return any(not data.labelled for data in self.validation.values())


@dataclass(frozen=True)
class Regularization:
    """``anchor_weight`` > 0 adds the distillation term towards the starting network's
    outputs on the same minibatch; ``trust_radius`` bounds how far (RMS per parameter, in
    the layout's units) a candidate may move from the start."""

    anchor_weight: float = 0.0
    trust_radius: float | None = None

    def __post_init__(self) -> None:
        if not self.anchor_weight >= 0:
            raise PolystepError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        if self.trust_radius is not None and not self.trust_radius > 0:
            raise PolystepError(f"trust_radius must be > 0, got {self.trust_radius}")
        object.__setattr__(self, "anchor_weight", float(self.anchor_weight))


@dataclass(frozen=True)
class Output:
    """Where the run writes (None: nowhere) and what it shows while it runs."""

    out_dir: Path | None = None
    checkpoint_every: int = CHECKPOINT_EVERY
    progress: bool = True
    description: str = "adapt"
    report: Callable[[str], None] | None = None  # gets the one-line summary at the end

    def __post_init__(self) -> None:
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "checkpoint_every", int(self.checkpoint_every))


_GROUPS: dict[str, tuple[str, str]] = {
    "validation": ("scoring", "validation"),
    "test": ("scoring", "test"),
    "eval_every": ("scoring", "every"),
    "keep_best": ("scoring", "keep_best"),
    "anchor_weight": ("regularization", "anchor_weight"),
    "trust_radius": ("regularization", "trust_radius"),
    "out_dir": ("output", "out_dir"),
    "checkpoint_every": ("output", "checkpoint_every"),
    "progress": ("output", "progress"),
    "description": ("output", "description"),
    "report": ("output", "report"),
}
FLAT_OPTIONS = (*_GROUPS, "monitor")


def group_options(
    scoring: Scoring | None = None,
    regularization: Regularization | None = None,
    output: Output | None = None,
    *,
    monitor: SpikeDataset | None = None,
    **flat: Any,
) -> tuple[Scoring, Regularization, Output]:
    """The three groups, each updated by its flat keywords (``monitor`` is a shorthand for
    ``test={"monitor": monitor}``)."""
    unknown = sorted(set(flat) - set(_GROUPS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(FLAT_OPTIONS)}")
    groups: dict[str, Any] = {
        "scoring": scoring or Scoring(),
        "regularization": regularization or Regularization(),
        "output": output or Output(),
    }
    for group in groups:
        changes = {_GROUPS[k][1]: v for k, v in flat.items() if _GROUPS[k][0] == group}
        if changes:
            groups[group] = replace(groups[group], **changes)
    if monitor is not None and "monitor" not in groups["scoring"].test:
        test = {**groups["scoring"].test, "monitor": monitor}
        groups["scoring"] = replace(groups["scoring"], test=test)
    return groups["scoring"], groups["regularization"], groups["output"]
