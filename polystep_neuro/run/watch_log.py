"""The stream watcher's log (``watch.jsonl``): reading it back and summing it up, with the
accuracy from whatever labels the stream had, while drift was flagged and elsewhere."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LOG_NAME = "watch.jsonl"


def read_log(out_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(batch records, events) of a watcher's log (none when nothing was logged yet)."""
    path = Path(out_dir) / LOG_NAME
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if "event" not in r], [r for r in records if "event" in r]


def _adapted_served(batch: dict[str, Any]) -> bool:
    return batch.get("served", "adapted" if batch.get("phase") == "adapted" else "") == "adapted"


def _drift_flagged(batch: dict[str, Any]) -> bool:
    """The detector's drift held after this batch, or an adapted network served it (the
    batch that cleared the drift)."""
    return batch.get("phase", "watching") != "watching" or _adapted_served(batch)


# what the summary splits the labelled batches into
STRETCHES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "drift_flagged": _drift_flagged,
    "adapted_served": _adapted_served,
    "elsewhere": lambda batch: not _drift_flagged(batch),
}


def summarize(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts of events and, over the batches that had labels, both networks' accuracy:
    over all of them, and apart while drift was flagged (``drift_flagged``, of which
    ``adapted_served`` with an adapted network served) and ``elsewhere`` — averaged
    together, the clean batches hide what adapting did on the drifted ones."""
    batches, events = read_log(out_dir)
    labelled = [b for b in batches if "serving_accuracy" in b]
    summary: dict[str, Any] = {
        "batches": len(batches),
        "events": {
            name: sum(e["event"] == name for e in events)
            for name in ("drift", "adapted", "rolled_back", "cleared", "dropped")
        },  # fmt: skip
    }
    if labelled:
        summary.update(_accuracies(labelled))
        summary["stretches"] = {
            name: {"batches": len(part), **_accuracies(part)}
            for name, inside in STRETCHES.items()
            if (part := [b for b in labelled if inside(b)])
        }
    return summary


def _accuracies(batches: list[dict[str, Any]]) -> dict[str, float]:
    """Over the samples, not the batches: a stream's short last batch (or a folder's
    batches of other sizes) must not weigh as much as a full one.  Logs written before the
    records held their sample count weigh every batch alike."""
    weights = [b.get("labelled", 1) for b in batches]
    return {
        key: float(np.average([b[key] for b in batches], weights=weights))
        for key in ("serving_accuracy", "start_accuracy")
    }


def stretches_line(summary: dict[str, Any]) -> str | None:
    """The labelled accuracy while drift was flagged and elsewhere, for the console (None
    without labels)."""
    parts = summary.get("stretches")
    if not parts:
        return None

    def said(name: str, what: str) -> str:
        part = parts.get(name)
        if part is None:
            return f"{what}: no batch"
        return (
            f"{what} ({part['batches']} batches): served {part['serving_accuracy']:.1%}, "
            f"deployed {part['start_accuracy']:.1%}"
        )

    words = [said("drift_flagged", "while drift was flagged")]
    if "adapted_served" in parts:
        words[0] += f" ({said('adapted_served', 'with an adapted network served')})"
    words.append(said("elsewhere", "elsewhere"))
    return "accuracy from the stream's labels (never used to adapt): " + "; ".join(words)
