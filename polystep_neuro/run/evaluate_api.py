"""``polystep_neuro.evaluate``: a network's accuracy and loss on labelled spikes, on any
backend, as the ``evaluate`` command scores it (the loaded network, nothing rewritten)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.run_defaults import RunConfig


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured: accuracy (a fraction), mean loss (cross-entropy of the
    class counts, as adaptation scores), the samples, and where it ran."""

    accuracy: float
    loss: float
    samples: int
    backend: str
    device: str  # what the backend says it runs on
    precision: str = ""  # the backend's arithmetic ("float32", "loihi-fixed")

    @property
    def runs_on(self) -> str:
        """Where and in which arithmetic, for people: "cpu, Loihi 2 fixed point"."""
        from polystep_neuro.run.writable import FIXED_POINT

        arithmetic = {FIXED_POINT: "Loihi 2 fixed point"}.get(self.precision, self.precision)
        return ", ".join(part for part in (self.device, arithmetic) if part)

    def __str__(self) -> str:
        return (
            f"accuracy {self.accuracy:.1%}, loss {self.loss:.4f} on {self.samples} samples "
            f"({self.backend}: {self.runs_on})"
        )


def score_network(
    spec: NetworkSpec,
    data: SpikeDataset,
    cfg: RunConfig,
    report: Callable[[str], None] | None = None,
) -> Evaluation:
    """``spec`` loaded on ``cfg.backend`` and scored on all of labelled ``data`` (the command
    and the API share it); ``report`` gets the notes on what was loaded."""
    from polystep_neuro.run.evaluation import score
    from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, make_loss
    from polystep_neuro.run.recipe import opened

    with opened(spec, cfg, report=report, scoring=True) as device:
        result = score(device.backend, data, make_loss("ce", spec.num_steps, COUNT_LOGIT_SCALE))
        caps = device.backend.capabilities
    return Evaluation(
        result.accuracy, result.loss, len(data), cfg.backend, caps.device, caps.precision
    )


# Scoring reads the whole dataset in chunks of its own (evaluation.EVAL_CHUNK); the dataset's
# minibatch size is not used.
EVALUATE_BATCH = 128


def evaluate(
    model: Any,
    data: Any,
    backend: str = RunConfig.backend,
    *,
    time_steps: int | None = None,
    time_first: bool = False,
    torch_device: str = RunConfig.torch_device,
    timeout_s: float | None = RunConfig.timeout_s,
) -> Evaluation:
    """Accuracy and loss of ``model`` on ``data`` (a (spikes, labels) pair, an ``.npz`` path
    with both, a SpikeDataset, ...) on ``backend``; ``time_first``: spikes are (T, n,
    N_in).  A NetworkSpec (or its ``.npz``) is scored as it is, as ``polystep-neuro
    evaluate --spec`` does: it is what a device ran.  An snnTorch module or a NIR graph is
    converted for ``backend`` first, as :func:`polystep_neuro.adapt` converts it (an
    snnTorch module without ``time_steps`` runs the data's T)."""
    from polystep_neuro.core.errors import PolystepError
    from polystep_neuro.run import user_data
    from polystep_neuro.run.api import _as_spec, _dataset, is_spec, steps_flag
    from polystep_neuro.run.reference import as_reference
    from polystep_neuro.run.spike_layout import steps_for_module

    if not isinstance(data, SpikeDataset):  # read once (a path): T comes from it
        data = user_data.split(data, need_labels=True, what="data")
    time_steps = steps_for_module(model, data, time_steps, time_first)
    reference = as_reference(model, time_steps)
    spec = reference.spec if is_spec(model) else _as_spec(reference, time_steps, backend)[0]
    scored = _dataset(data, spec, EVALUATE_BATCH, 0, time_first, "data", steps_flag(model))
    if not scored.labelled:
        raise PolystepError("evaluate scores accuracy: the data need labels")
    cfg = RunConfig(backend=backend, torch_device=torch_device, timeout_s=timeout_s)
    return score_network(spec, scored, cfg)
