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


def test_each_scored_set_has_one_colour_in_both_panels(tmp_path: Path, monkeypatch) -> None:
    """The loss and the accuracy panel colour a set alike (a new user saw clean/shifted
    orange/green beside blue/orange)."""
    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    history = [
        {"step": s, "loss_min": 1.0, "clean_loss": 0.3, "shifted_loss": 0.9,
         "clean_accuracy": 0.9, "shifted_accuracy": 0.6}
        for s in range(5)
    ]  # fmt: skip
    plots.adapt_figure(tmp_path / "adapt.png", history)
    (fig,) = kept
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes]
    loss, acc = (c for c in colours if "clean" in c)
    assert loss["clean"] == acc["clean"] and loss["shifted"] == acc["shifted"]
    assert loss["clean"] != loss["shifted"] != loss["best candidate"]
