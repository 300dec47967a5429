"""The figures: a label-free run (no labelled set scored) draws its accuracy panel without
matplotlib's empty-legend warning, and says what would fill it."""

from __future__ import annotations

import warnings
from pathlib import Path

from polystep_neuro.run import plots


def test_an_unlabelled_run_draws_without_an_empty_legend_warning(tmp_path: Path) -> None:
    history = [{"step": s, "loss_min": 1.0 / (s + 1), "val_loss": 0.5} for s in range(1, 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the empty legend used to warn here
        plots.adapt_figure(tmp_path / "adapt.png", history)
    assert (tmp_path / "adapt.png").stat().st_size > 0
