"""matplotlib figures for adaptation runs (written to files; no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _curve(ax: Any, history: Sequence[Mapping[str, Any]], title: str) -> None:
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["loss_min"] for r in history], lw=1, label="best candidate loss")
    monitored = [r for r in history if "monitor_loss" in r]
    if monitored:
        ax.plot(
            [r["step"] for r in monitored],
            [r["monitor_loss"] for r in monitored],
            lw=1.5,
            label="loss of current parameters",
        )
    ax.set_xlabel("PolyStep step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)


def demo_figure(
    path: str | os.PathLike[str],
    pretrain_history: Sequence[Mapping[str, Any]],
    adapt_history: Sequence[Mapping[str, Any]],
    accuracies: Mapping[str, float],
) -> None:
    """Loss curves of both stages and the before/after accuracy bars, as one PNG."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _curve(axes[0], pretrain_history, "pretraining (no gradients)")
    _curve(axes[1], adapt_history, "on-device adaptation (writable subset)")
    names = list(accuracies)
    values = [100 * accuracies[n] for n in names]
    bars = axes[2].bar(
        range(len(names)),
        values,
        color=["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#64b5cd"][: len(names)],
    )
    axes[2].set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axes[2].set_ylabel("test accuracy (%)")
    axes[2].set_ylim(0, 100)
    axes[2].set_title("accuracy")
    for bar, value in zip(bars, values, strict=True):
        axes[2].text(
            bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}", ha="center", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adapt_figure(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    _curve(ax, history, "adaptation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
