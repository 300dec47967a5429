"""Every default of an adaptation run, written once: the API (``polystep_neuro.adapt``), the
``adapt`` and ``evaluate`` commands and the demo's adaptation stage all start from
:class:`RunConfig`.

What a run adapts is decided by :func:`~polystep_neuro.run.writable.resolve_writable`; how
strongly it holds on to the start is decided here (:func:`anchor_weight`):

- **with clean data** (replay, or the built-in data's clean half) the clean data keeps what
  the network did, so the run needs no anchor;
- **with drifted data only** nothing says how the network should treat clean inputs, so
  the run is anchored to the start's own outputs (weight ``DRIFTED_ONLY_ANCHOR``) besides
  adapting only the hidden neurons' biases (docs/benchmarks.md, section 4, measures both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from polystep_neuro.run.label_free import DEFAULT_OBJECTIVE
from polystep_neuro.run.loop_options import CHECKPOINT_EVERY, EVAL_EVERY
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.writable import WritableChoice

DRIFTED_ONLY_ANCHOR = 2.0  # weight of the distillation term towards the start, no clean data


@dataclass
class RunConfig:
    """How to run one adaptation, apart from the network and the data."""

    backend: str = "torch-sim-fixed"  # the device backend (`polystep-neuro devices list`)
    torch_device: str = "auto"  # where torch runs: the simulator and the optimiser
    steps: int = 300  # adaptation steps
    batch_size: int = 128  # samples per minibatch
    val_fraction: float = 0.2  # of the training (and replay) data, held out to validate
    writable: WritableChoice = None  # None: see polystep_neuro.run.writable
    objective: str = DEFAULT_OBJECTIVE  # without labels: see polystep_neuro.run.label_free
    anchor: float | None = None  # None: see anchor_weight
    trust_radius: float | None = None  # None: no limit
    settings: Settings = field(default_factory=Settings)  # the optimiser and its seed
    timeout_s: float | None = None  # bound on a remote device's answer
    out_dir: Path | None = None  # checkpoints, metrics log, adapted network (None: none)
    resume: bool = False  # continue from out_dir's checkpoint
    progress: bool = True
    eval_every: int = EVAL_EVERY
    checkpoint_every: int = CHECKPOINT_EVERY

    @property
    def seed(self) -> int:
        """The one seed of a run: data split, minibatch order, optimiser."""
        return self.settings.seed


def anchor_weight(has_clean: bool, anchor: float | None = None) -> float:
    """The weight of the pull towards the start's outputs (module docstring); an explicit
    ``anchor`` wins."""
    if anchor is not None:
        return anchor
    return 0.0 if has_clean else DRIFTED_ONLY_ANCHOR
