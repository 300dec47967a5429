"""Checkpoints of the adaptation loop: written atomically, read back with every mismatch
named, so an interrupted run continues bit for bit or says why it cannot.

The loop's state is small (step, optimiser state with its RNG, the start and the best point
so far, the start's scores): the minibatch is a pure function of the step index and the
backend is pure, so nothing else is needed to resume exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec

CHECKPOINT_NAME = "checkpoint.pt"
SPEC_NAME = "adapted.npz"
VERSION = 2


def ensure_writable_dir(path: Path) -> None:
    """Create ``path`` or fail now with a clear message, not after an hour of adapting."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PolystepError(
            f"output folder {path} is not writable: {exc.strerror or exc}"
        ) from None


def save(out_dir: Path, state: dict[str, Any], handed_back: NetworkSpec) -> Path:
    """``state`` as ``checkpoint.pt`` and the network to hand back as ``adapted.npz``, each
    written beside its target and then renamed over it (a crash mid-write keeps the last)."""
    path = out_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save({"version": VERSION, **state}, tmp)
    os.replace(tmp, path)
    spec_tmp = out_dir / (SPEC_NAME + ".tmp")
    handed_back.save(spec_tmp)
    os.replace(spec_tmp, out_dir / SPEC_NAME)
    return path


def find(path: str | os.PathLike[str] | None, out_dir: Path | None) -> Path:
    """The checkpoint file ``path`` names (a file or a folder; None: ``out_dir``'s)."""
    if path is None:
        if out_dir is None:
            raise PolystepError("resume needs a checkpoint path or an out_dir")
        path = out_dir
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise PolystepError(f"no checkpoint to resume from at {path}")
    return path


def load(
    path: Path, device: torch.device, names: Sequence[str], scales: Sequence[float]
) -> dict[str, Any]:
    """The state saved at ``path``, checked against the run that resumes it: the same
    version, writable names and parameter scales (the optimiser checks its own state)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise PolystepError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise PolystepError(f"checkpoint {path} has unsupported version {version}")
    if state.get("names") != list(names):
        raise PolystepError(
            f"checkpoint {path} adapts {state.get('names')}, but this run adapts {list(names)}"
        )
    if state.get("scales") != list(scales):
        raise PolystepError(
            f"checkpoint {path} was written with parameter scales {state.get('scales')}, "
            f"this run uses {list(scales)}: a different network, --probe, --rank or "
            "--rank-rule; resume with the ones the run started with (runs started before "
            "PolyStep drew one subspace over every tensor need --rank-rule equal)"
        )
    return state
