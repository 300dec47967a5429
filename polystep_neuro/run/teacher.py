"""The trained model as a teacher: its outputs on the user's data as soft targets.

Adapting a deployed network towards the *trained model* rather than towards labels alone
(knowledge distillation, forward passes only on the device side): the teacher runs on the
host once per sample, and its output counts ride along with every minibatch.  Nothing in
the adaptation loop changes: a :class:`TeacherDataset` hands the loop targets that carry
the label and the teacher's counts side by side, and :func:`teacher_loss` reads them.  Its
validation and test sets stay plain labelled sets (what is handed back is still decided by
validation accuracy, as in every run).

With drifted data the same targets are the anchor: the teacher's outputs on the drifted
inputs replace the starting device network's own outputs, which carry the deployment gap.
On drifted data alone that measured worse than the start's own anchor (3-5 clean points
lost on a user's two networks, docs/benchmarks.md section 4): the teacher's outputs on
drifted inputs carry the drift too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, LossFn, count_cross_entropy, distillation

# Weight of the teacher's soft targets beside the labels' cross-entropy.
TEACHER_WEIGHT = 1.0
# Said where a teacher holds a run on drifted data alone (docs/benchmarks.md, section 4).
DRIFTED_ONLY_NOTE = (
    "note: on drifted data alone a teacher cost 2.9-5.2 clean points on the networks "
    "measured, the starting network as the anchor (no teacher) under 1"
)


class TeacherDataset(SpikeDataset):
    """Spike trains, labels and the teacher's output counts on them.

    ``batch`` returns ``(spikes, targets)`` with targets ``(B, 1 + C)`` float32: the label in
    column 0, the teacher's counts after it (what :func:`teacher_loss` reads); ``labels``
    stay the plain ``(n,)`` labels, so the set scores like any other.
    """

    def __init__(
        self,
        spikes: np.ndarray,
        labels: np.ndarray,
        teacher: np.ndarray,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        super().__init__(spikes, labels, batch_size, seed)
        teacher_t = torch.as_tensor(np.asarray(teacher), dtype=torch.float32)
        if teacher_t.ndim != 2 or teacher_t.shape[0] != len(self):
            raise PolystepError(
                f"teacher counts must be (n, classes) for the {len(self)} samples, got "
                f"{tuple(teacher_t.shape)}"
            )
        self.teacher = teacher_t.to(self.spikes.device)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch ``index`` of the same endless shuffled stream as a SpikeDataset's."""
        epoch, within = divmod(index, self.batches_per_epoch)
        idx = self._order(epoch)[within * self.batch_size : (within + 1) * self.batch_size]
        labels = self.labels[idx, None].to(torch.float32)
        return self.spikes[idx], torch.cat([labels, self.teacher[idx]], dim=1)

    def subset(self, indices: np.ndarray | torch.Tensor) -> TeacherDataset:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        part = TeacherDataset(
            self.spikes[idx.to(self.spikes.device)].cpu().numpy(),
            self.labels[idx.to(self.labels.device)].cpu().numpy(),
            self.teacher[idx.to(self.teacher.device)].cpu().numpy(),
            self.batch_size,
            self.seed,
        )
        part.to(self.spikes.device)
        return part

    def to(self, device: torch.device | str) -> TeacherDataset:
        super().to(device)
        self.teacher = self.teacher.to(device)
        return self


def teacher_concat(parts: list[TeacherDataset], batch_size: int, seed: int) -> TeacherDataset:
    """One stream holding every part (e.g. clean and drifted data, each with its teacher)."""
    return TeacherDataset(
        torch.cat([p.spikes.cpu() for p in parts]).numpy(),
        torch.cat([p.labels.cpu() for p in parts]).numpy(),
        torch.cat([p.teacher.cpu() for p in parts]).numpy(),
        batch_size,
        seed,
    )


def teacher_loss(
    teacher_weight: float = TEACHER_WEIGHT,
    label_weight: float = 1.0,
    scale: float = COUNT_LOGIT_SCALE,
) -> LossFn:
    """The loss of a run with a teacher: ``label_weight`` x the count cross-entropy on the
    labels plus ``teacher_weight`` x the distillation towards the teacher's counts, per
    parameter set.  Plain ``(B,)`` label targets (validation and test sets) get the count
    cross-entropy alone, the loss every run scores with."""
    if not (teacher_weight >= 0 and label_weight >= 0 and teacher_weight + label_weight > 0):
        raise PolystepError(
            f"teacher and label weights must be >= 0 and not both 0, got {teacher_weight} "
            f"and {label_weight}"
        )

    def loss(counts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 1:
            return count_cross_entropy(counts, targets, scale)
        labels = targets[:, 0].to(torch.int64)
        out = teacher_weight * distillation(counts, targets[:, 1:], scale)
        if label_weight > 0:
            out = out + label_weight * count_cross_entropy(counts, labels, scale)
        return out

    return loss


def teacher_labels(teacher: np.ndarray) -> np.ndarray:
    """Labels where the user has none: the teacher's top output neuron per sample."""
    return np.asarray(teacher).argmax(axis=1).astype(np.int64)


def with_teacher(
    teacher: object, stream: SpikeDataset, spec: NetworkSpec, anchor: float
) -> tuple[TeacherDataset, LossFn]:
    """``stream`` with ``teacher``'s output counts on it (a trained model: snnTorch module,
    NIR graph or file, NetworkSpec; run on the host, over the steps whose inputs the device
    network ``spec`` answers to) and the loss that pulls towards them: the teacher takes the
    anchor's place (weight ``anchor``, else :data:`TEACHER_WEIGHT`)."""
    from polystep_neuro.run.reference import as_reference

    reference = as_reference(teacher, spec.num_steps)
    spikes = stream.spikes.cpu().numpy()
    counts = reference.counts(spikes, reference.window(spec))
    labels = stream.labels.cpu().numpy()
    data = TeacherDataset(spikes, labels, counts, stream.batch_size, stream.seed)
    return data.to(stream.spikes.device), teacher_loss(teacher_weight(anchor))


def teacher_weight(anchor: float) -> float:
    """The weight of the teacher's soft targets in a run whose anchor weight is ``anchor``:
    the teacher takes the anchor's place, with :data:`TEACHER_WEIGHT` where there is none."""
    return anchor if anchor > 0 else TEACHER_WEIGHT


def taught(teacher: object, data: Any, spec: NetworkSpec, cfg: Any) -> tuple[Any, Any]:
    """A run's data (:class:`~polystep_neuro.run.recipe.RunData`) with ``teacher``'s outputs
    on its stream, and the ``on_ready`` hook that makes them the loop's targets in place of
    the anchor to the start (:func:`~polystep_neuro.run.recipe.run_adaptation`)."""
    from dataclasses import replace

    from polystep_neuro.run.run_defaults import anchor_weight

    weight = anchor_weight(data.has_clean, cfg.anchor)
    stream, loss = with_teacher(teacher, data.stream, spec, weight)

    def on_ready(adapter: Any, device: Any, anchor: float) -> None:
        adapter.loss = loss
        adapter.regularization = replace(adapter.regularization, anchor_weight=0.0)

    return replace(data, stream=stream), on_ready
