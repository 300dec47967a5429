"""Where a deployed network departs from the trained one, layer by layer, on any backend.

The user's data go through the reference (the trained model with its own tool's
semantics, float32, on the host: :mod:`polystep_neuro.run.reference`) and through the
device network on the chosen backend.  Hidden layers are read through the device contract
alone (load, evaluate, close), so every backend answers the same way: the device network
cut after layer k is loaded and its output counts are layer k's.  Two views per layer:

- **end to end**: the device's layer k fed by the device's own earlier layers, so the
  differences of every layer up to k add up;
- **alone**: the device's layer k fed the reference's own input to that layer (the data for
  layer 0, the reference's spikes of layer k-1 otherwise), so a layer whose conversion is
  off stands out even when others differ a little too.

Counts are compared per sample and neuron: how many are equal, and the rate difference
(mean |device - reference| spikes per neuron per step).  The first layer whose counts
differ at all is where the two first diverge; the layer with the largest rate difference
alone is the one whose own conversion departs most.  Both outputs are scored on the labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import user_data
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.evaluation import counts_of
from polystep_neuro.run.losses import accuracy, decisions
from polystep_neuro.run.reference import Reference, silent_note, silent_outputs
from polystep_neuro.run.spike_layout import batch_first, steps_for_module


@dataclass(frozen=True)
class LayerParity:
    """One layer's spike counts on the device against the reference's."""

    layer: int
    neurons: int
    reference_rate: float  # spikes per neuron per step
    device_rate: float  # end to end
    rate_difference: float  # mean |device - reference| count / T, end to end
    equal: float  # share of (sample, neuron) counts that are equal, end to end
    alone_rate_difference: float  # the same with the layer fed the reference's input
    alone_equal: float
    changes: tuple[str, ...] = ()  # what the conversion changed in this layer

    @property
    def relative_difference(self) -> float:
        """End to end: mean |device - reference| count over the mean reference count."""
        return _relative(self.rate_difference, self.reference_rate)

    @property
    def alone_relative_difference(self) -> float:
        """The same for the layer fed the reference's input: its own conversion's share."""
        return _relative(self.alone_rate_difference, self.reference_rate)


def _relative(difference: float, rate: float) -> float:
    if rate > 0:
        return difference / rate
    return 0.0 if difference == 0 else math.inf


@dataclass
class ParityReport:
    """The per-layer comparison and both outputs' accuracy (see the module docstring)."""

    backend: str
    device: str
    reference: str
    samples: int
    num_steps: int
    layers: list[LayerParity]
    reference_accuracy: float | None  # None: the data had no labels
    device_accuracy: float | None
    same_prediction: float  # share of samples both decide, the same way (a tie: no decision)
    changes: list[str] = field(default_factory=list)
    reference_ties: float = 0.0  # share of samples whose top output count is shared
    device_ties: float = 0.0
    reference_silent: float = 0.0  # share of samples without one output spike (reference)
    both_undecided: float = 0.0  # share of samples on which both tie (neither decides)

    @property
    def first_divergence(self) -> int | None:
        """The first layer whose counts differ from the reference's (None: none do)."""
        return next((p.layer for p in self.layers if p.equal < 1.0), None)

    @property
    def largest_divergence(self) -> int | None:
        """The layer whose own conversion departs most: the largest rate difference alone,
        relative to the layer's own rate (so a quiet output layer counts as much as a busy
        hidden one)."""
        diverging = [p for p in self.layers if p.alone_equal < 1.0]
        if not diverging:
            return None
        return max(diverging, key=lambda p: p.alone_relative_difference).layer

    def table(self) -> str:
        """A markdown table, one row per layer, and the summary lines under it."""
        lines = [
            "| layer | neurons | spikes/step reference | device | counts equal alone | rate "
            "difference alone | counts equal end to end | rate difference end to end | "
            "conversion |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in self.layers:
            approx = sum("[approximate]" in c for c in p.changes)
            what = f"{len(p.changes)} changes ({approx} approximate)" if p.changes else "exact"
            lines.append(
                f"| {p.layer} | {p.neurons} | {p.reference_rate:.3f} | {p.device_rate:.3f} | "
                f"{p.alone_equal:.1%} | {p.alone_rate_difference:.4f} "
                f"({p.alone_relative_difference:.0%}) | {p.equal:.1%} | "
                f"{p.rate_difference:.4f} ({p.relative_difference:.0%}) | {what} |"
            )
        return "\n".join(lines + [""] + self.summary_lines())

    def summary(self) -> str:
        """Two lines: both outputs' accuracy, and where the counts first and most diverge
        (``print(report.summary())``, as for an adaptation or a deployment)."""
        return "\n".join(self.summary_lines())

    def __str__(self) -> str:
        return self.table()

    def summary_lines(self) -> list[str]:
        first, largest = self.first_divergence, self.largest_divergence
        if self.reference_accuracy is None or self.device_accuracy is None:
            scores = f"no labels, so no accuracy scored on {self.samples} samples"
        else:
            gap = 100 * (self.device_accuracy - self.reference_accuracy)
            scores = (
                f"output accuracy on {self.samples} samples: reference "
                f"{self.reference_accuracy:.1%}, {self.backend} {self.device_accuracy:.1%} "
                f"({gap:+.1f} points)"
            )
        silent = silent_note(self.reference_silent, self.reference)
        wrong = "" if self.reference_accuracy is None else " and counts as wrong"
        return [
            *([] if silent is None else [silent]),
            f"{scores}; the same decision on {self.same_prediction:.1%} of samples (a tie "
            f"between output neurons is no decision{wrong}"
            + (f"; neither decides on {self.both_undecided:.1%}" if self.both_undecided else "")
            + ")",
            "first divergence: "
            + ("none (every count equal)" if first is None else f"layer {first}")
            + "; largest divergence of a layer's own: "
            + ("none" if largest is None else f"layer {largest}"),
            f"ties for the top output count (no decision, counted wrong): reference "
            f"{self.reference_ties:.1%}, {self.backend} {self.device_ties:.1%}"
            + (
                " — the device's coarser counts tie more often, and such ties can be most "
                "of a small accuracy gap"
                if self.device_ties - self.reference_ties >= 0.005
                else ""
            ),
        ]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, p in zip(out["layers"], self.layers, strict=True):
            row["relative_difference"] = p.relative_difference
            row["alone_relative_difference"] = p.alone_relative_difference
        out["first_divergence"] = self.first_divergence
        out["largest_divergence"] = self.largest_divergence
        return out

    def save(self, folder: str | Path) -> Path:
        """``summary.json`` and ``parity.md`` in ``folder``; returns the JSON's path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "parity.md").write_text(self.table() + "\n", encoding="utf-8")
        path = folder / "summary.json"
        path.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return path


def prefix(spec: NetworkSpec, layer: int) -> NetworkSpec:
    """The network cut after ``layer`` (its output is that layer's spikes), nothing writable."""
    return NetworkSpec(spec.layers[: layer + 1], spec.num_steps).validate()


def alone(spec: NetworkSpec, layer: int) -> NetworkSpec:
    """Layer ``layer`` on its own (its input: the spikes of the layer before)."""
    return NetworkSpec([replace(spec.layers[layer])], spec.num_steps).validate()


def check_parity(
    reference: Reference,
    backend: Any,
    device_spec: NetworkSpec,
    spikes: np.ndarray,
    labels: np.ndarray | None,
    *,
    backend_name: str = "",
    changes: Sequence[str] = (),
) -> ParityReport:
    """Compare ``reference`` with ``device_spec`` running on the open ``backend`` (see the
    module docstring).  ``spikes`` (B, T, N_in), ``labels`` (B,).  The backend is left
    holding the whole device network (as calibrated by it)."""
    ref_spikes = reference.spikes(spikes)
    ref_counts = [s.sum(axis=1, dtype=np.int64) for s in ref_spikes]
    backend.load(device_spec)
    whole = backend.spec  # calibrated by a fixed-point device: every cut keeps its integers
    # Doubled output neurons (deploy's copies): the rows compare each class's first copy
    # (the neuron the model has), the outputs below what the device decides (the sums).
    loaded = whole.first_output_copy()
    steps = loaded.num_steps
    rows = []
    for k in range(len(loaded.layers)):
        backend.load(prefix(loaded, k))
        end_to_end = _counts(backend, spikes)
        if k == 0:
            by_itself = end_to_end
        else:
            backend.load(alone(loaded, k))
            by_itself = _counts(backend, ref_spikes[k - 1])
        mine = tuple(str(c) for c in changes if str(c).startswith(f"layer {k}: "))
        rows.append(_row(k, ref_counts[k], end_to_end, by_itself, steps, mine))
    backend.load(whole)
    if whole.output_copies != 1:
        end_to_end = _counts(backend, spikes)  # each class over its copies
    ref_out = torch.as_tensor(ref_counts[-1])
    dev_out = torch.as_tensor(end_to_end)  # the last cut is the whole network

    def scored(counts: torch.Tensor) -> float | None:
        if labels is None:
            return None
        return float(accuracy(counts[None], torch.as_tensor(labels, dtype=torch.int64))[0])

    ref_said, dev_said = decisions(ref_out), decisions(dev_out)  # a tie: -1, no decision
    return ParityReport(
        backend=backend_name or backend.capabilities.name,
        device=backend.capabilities.describe(),
        reference=reference.label,
        samples=int(len(spikes)),
        num_steps=int(steps),
        layers=rows,
        reference_accuracy=scored(ref_out),
        device_accuracy=scored(dev_out),
        same_prediction=float(((ref_said == dev_said) & (ref_said >= 0)).float().mean()),
        both_undecided=float(((ref_said < 0) & (dev_said < 0)).float().mean()),
        changes=[str(c) for c in changes],
        reference_ties=float((ref_said < 0).float().mean()),
        reference_silent=silent_outputs(ref_counts[-1]),
        device_ties=float((dev_said < 0).float().mean()),
    )


def _counts(backend: Any, spikes: np.ndarray) -> np.ndarray:
    labels = np.zeros(len(spikes), dtype=np.int64)
    data = SpikeDataset(np.asarray(spikes), labels, max(1, len(spikes)))
    return np.asarray(torch.as_tensor(counts_of(backend, data)).cpu())[0].astype(np.int64)


def _row(
    k: int,
    ref: np.ndarray,
    end_to_end: np.ndarray,
    by_itself: np.ndarray,
    steps: int,
    changes: tuple[str, ...],
) -> LayerParity:
    def diff(dev: np.ndarray) -> float:
        return float(np.mean(np.abs(dev - ref))) / steps

    return LayerParity(
        layer=k,
        neurons=int(ref.shape[1]),
        reference_rate=float(ref.mean()) / steps,
        device_rate=float(end_to_end.mean()) / steps,
        rate_difference=diff(end_to_end),
        equal=float(np.mean(end_to_end == ref)),
        alone_rate_difference=diff(by_itself),
        alone_equal=float(np.mean(by_itself == ref)),
        changes=tuple(str(c) for c in changes),
    )


def gap_closed(reference: float, start: float, end: float) -> float:
    """Share of the reference -> device accuracy gap a recovery closed (nan: no gap)."""
    gap = reference - start
    return (end - start) / gap if gap > 0 else math.nan


def run_check(
    model: Any,
    backend: str = "torch-sim-fixed",
    spikes: Any = None,
    labels: Any = None,
    *,
    time_steps: int | None = None,
    device_spec: NetworkSpec | None = None,
    time_first: bool = False,
    torch_device: str = "auto",
    timeout_s: float | None = None,
) -> ParityReport:
    """Open ``backend``, convert ``model`` for it (or take ``device_spec``), and compare the
    two on ``spikes`` (B, T, N_in; ``time_first``: (T, B, N_in)) with ``labels`` (B,);
    ``spikes`` may be any data form :mod:`~polystep_neuro.run.user_data` reads, and without
    labels the report compares the decisions and scores no accuracy."""
    from devices.readout import with_readout
    from devices.registry import backend_options, open_backend
    from polystep_neuro.run.reference import as_reference
    from simulators.torch_device import resolve_device

    if labels is None:  # spikes alone, or a container that holds the labels too
        spikes, labels = user_data.split(spikes, need_labels=False)
    reference = as_reference(model, steps_for_module(model, spikes, time_steps, time_first))
    x = batch_first(
        np.asarray(torch.as_tensor(spikes).cpu()), reference.spec, time_first, "the spikes",
        "time_steps=",
    )  # fmt: skip
    y = None if labels is None else user_data.labels_for(labels, len(x), reference.spec.n_classes)
    where = resolve_device(torch_device)
    dev = with_readout(
        open_backend(backend, **backend_options(backend, device=where, timeout_s=timeout_s))
    )
    try:
        converted, changes = reference.for_backend(backend, dev.capabilities)
        if device_spec is None:
            device_spec = converted
        else:
            changes = [*changes, f"the device network is the given spec ({device_spec!r})"]
        return check_parity(reference, dev, device_spec, x, y, backend_name=backend,
                            changes=changes)  # fmt: skip
    finally:
        dev.close()
