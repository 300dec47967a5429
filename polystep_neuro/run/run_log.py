"""The run's metrics log: one JSON line per step (and one for the start, step 0), appended as
the run goes, so a crashed or interrupted run keeps what it measured."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """``metrics.jsonl`` in ``out_dir``; with no folder it writes nothing."""

    def __init__(self, out_dir: Path | None) -> None:
        self.path = None if out_dir is None else out_dir / METRICS_NAME

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> list[dict[str, Any]] | None:
        """Drop the lines written after ``step`` (a checkpoint's), so a resumed log has no
        duplicates; returns the records kept (None: there is no log)."""
        if self.path is None or not self.path.exists():
            return None
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        return [json.loads(k) for k in kept]
