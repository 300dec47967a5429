"""matplotlib figures for adaptation runs (written to files; no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _curve(ax: Any, history: Sequence[Mapping[str, Any]], title: str) -> None:
    """Loss of the best candidate per step and, where scored, validation / test losses."""
    stepped = [r for r in history if "loss_min" in r]  # (the start has scores only)
    ax.plot(
        [r["step"] for r in stepped],
        [r["loss_min"] for r in stepped],
        lw=0.8,
        alpha=0.6,
        label="best candidate",
    )
    colours = _set_colours(history)
    for key, label in _scored(history, "_loss"):
        scored = [r for r in history if key in r]
        ax.plot([r["step"] for r in scored], [r[key] for r in scored], lw=1.5, label=label,
                color=colours[label])  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _accuracy_curves(ax: Any, history: Sequence[Mapping[str, Any]], title: str) -> None:
    """Accuracy of the current parameters on every scored set (clean and shifted test...);
    a label-free run without a labelled test set has none, and says so."""
    curves, colours = _scored(history, "_accuracy"), _set_colours(history)
    for key, label in curves:
        scored = [r for r in history if key in r]
        ax.plot([r["step"] for r in scored], [100 * r[key] for r in scored], lw=1.5, label=label,
                color=colours[label])  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    if curves:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no labelled set scored\n(--test NAME=FILE adds one)",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)  # fmt: skip


def _set_colours(history: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One colour per scored set, the same in the loss and the accuracy panel (the first of
    matplotlib's cycle is the best candidate's)."""
    labels = dict.fromkeys(
        lab for suffix in ("_loss", "_accuracy") for _, lab in _scored(history, suffix)
    )
    return {label: f"C{1 + i % 9}" for i, label in enumerate(labels)}


def _scored(history: Sequence[Mapping[str, Any]], suffix: str) -> list[tuple[str, str]]:
    """(key, label) of the per-set scores in ``history`` ending in ``suffix``, in order."""
    keys: dict[str, None] = {}
    for record in history:
        for key in record:
            if key.endswith(suffix) and key != "val" + suffix:
                keys.setdefault(key)
    return [
        (k, k.removesuffix(suffix).replace("val_", "validation ").replace("_", " ")) for k in keys
    ]


def demo_figure(
    path: str | os.PathLike[str],
    pretrain_history: Sequence[Mapping[str, Any]],
    adapt_history: Sequence[Mapping[str, Any]],
    accuracies: Mapping[str, float],
) -> None:
    """Loss curves of both stages and the before/after accuracy bars, as one PNG."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    _curve(axes[0], pretrain_history, "pretraining (no gradients)")
    _curve(axes[1], adapt_history, "on-device adaptation: loss")
    _accuracy_curves(axes[2], adapt_history, "on-device adaptation: accuracy")
    names = list(accuracies)
    values = [100 * accuracies[n] for n in names]
    bar_ax = axes[3]
    bars = bar_ax.bar(
        range(len(names)),
        values,
        color=["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#64b5cd"][: len(names)],
    )
    bar_ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    bar_ax.set_ylabel("test accuracy (%)")
    bar_ax.set_ylim(0, 100)
    bar_ax.set_title("accuracy")
    for bar, value in zip(bars, values, strict=True):
        bar_ax.text(
            bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}", ha="center", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adapt_figure(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]]) -> None:
    """Loss curves and accuracy curves of one adaptation run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _curve(axes[0], history, "adaptation: loss")
    _accuracy_curves(axes[1], history, "adaptation: accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def watch_figure(
    path: str | os.PathLike[str],
    batches: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    z_limit: float,
) -> None:
    """The stream watcher's record: the drift statistic per batch against its limit, and
    where batches had labels, the accuracy of the served and the deployed network (a running
    mean over 10 batches); every event marked on both."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    tested = [b for b in batches if b.get("z") is not None]
    top.plot([b["batch"] for b in tested], [b["z"] for b in tested], lw=0.8, label="|z|, largest")
    top.axhline(z_limit, color="k", ls="--", lw=0.8, label=f"limit {z_limit:g}")
    top.set_yscale("symlog")
    top.set_ylabel("drift statistic")
    labelled = [b for b in batches if "serving_accuracy" in b]
    for key, label in (("serving_accuracy", "served"), ("start_accuracy", "as deployed")):
        values = [100 * b[key] for b in labelled]
        smooth = [sum(values[max(0, i - 9) : i + 1]) / len(values[max(0, i - 9) : i + 1])
                  for i in range(len(values))]  # fmt: skip
        bottom.plot([b["batch"] for b in labelled], smooth, lw=1.2, label=label)
    bottom.set_ylabel("accuracy (%), labels never used")
    bottom.set_xlabel("batch")
    colours = {
        "drift": "tab:red",
        "adapted": "tab:green",
        "rolled_back": "tab:orange",
        "cleared": "tab:purple",
    }  # fmt: skip  (the drift statistic is tab:blue)
    for event in events:
        if event["event"] == "adapting":  # its outcome (adapted, rolled back) marks the batch
            continue
        for ax in (top, bottom):
            ax.axvline(event["batch"], color=colours.get(event["event"], "grey"), lw=0.8)
    for name, colour in colours.items():
        top.plot([], [], color=colour, label=name.replace("_", " "))
    top.legend(fontsize=7, ncol=3)
    if labelled:
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
