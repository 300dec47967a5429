"""The hardware-in-the-loop adaptation loop.

Per step: minibatch -> ``ask()`` V candidate parameter vectors -> ``backend.evaluate`` (the
device runs forward passes only) -> loss per candidate on the host -> ``tell()``.  Only the
device-writable parameters are stepped.

The loop and the step live here; everything around them is a small part the loop calls:
:mod:`~polystep_neuro.run.selection` (which network is handed back, decided on
validation), :mod:`~polystep_neuro.run.checkpoint` (atomic checkpoints, exact resume),
:mod:`~polystep_neuro.run.run_log` (one JSON line of metrics per step) and
:mod:`~polystep_neuro.run.progress` (the bar, the stage's wall time, Ctrl-C as "finish this
step, checkpoint, stop").  Options come in the small groups of
:mod:`~polystep_neuro.run.loop_options`.

Safe by construction: with a validation set, the network handed back is never less accurate
on validation than the one the run started from.  Held-out test sets are scored at the
start, along the way and at the end, so what adaptation cost on clean data is always
reported.  With an anchor weight the starting network's own outputs on each minibatch (one
extra parameter set per device call) are soft targets: without clean data the adapted
network is pulled towards what the start did, so it does not forget (learning without
forgetting, forward passes only).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from polystep_neuro.core.contract import Backend
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import checkpoint
from polystep_neuro.run.checkpoint import CHECKPOINT_NAME, SPEC_NAME, ensure_writable_dir
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.deprecation import renamed
from polystep_neuro.run.evaluation import Score, flat_scores, score
from polystep_neuro.run.loop_options import Output, Regularization, Scoring, group_options
from polystep_neuro.run.losses import (
    COUNT_LOGIT_SCALE,
    LossFn,
    distillation,
    make_loss,
    outside_trust_region,
)
from polystep_neuro.run.low_rank import LowRankProbes
from polystep_neuro.run.optimizers import AskTell, Settings, make_layout, make_optimizer
from polystep_neuro.run.params import ParamVector
from polystep_neuro.run.progress import ProgressBar, StageClock, ctrl_c_stops
from polystep_neuro.run.run_log import METRICS_NAME, MetricsLog
from polystep_neuro.run.selection import Selection

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "SPEC_NAME",
    "AdaptResult",
    "Adapter",
    "ensure_writable_dir",
]

StepCallback = Callable[["Adapter", dict[str, Any]], None]
# Per-step bookkeeping in a log record; every other key is a score.
_STEP_KEYS = ("step", "loss_min", "loss_mean", "candidates", "evaluations", "step_seconds")


@dataclass
class AdaptResult:
    spec: NetworkSpec  # the network handed back (the best on validation when validated)
    steps: int  # completed steps (counting those before a resume)
    evaluations: int  # forward passes (parameter sets x samples) sent to the device
    interrupted: bool
    wall_seconds: float
    history: list[dict[str, Any]]
    start: dict[str, float] = field(default_factory=dict)  # scores of the starting network
    end: dict[str, float] = field(default_factory=dict)  # scores of the network handed back
    best_step: int = 0  # the step whose parameters were handed back (0: the start)
    kept_start: bool = False  # validation never improved: the start is handed back unchanged
    adapted: tuple[str, ...] = ()  # the parameters this run changed (spec.writable: the device's)

    def summary(self) -> str:
        """One line: what was handed back and what it scores on validation and test."""
        if self.kept_start and self.steps > 0:
            head = (
                f"no step beat the starting network on validation in {self.steps} "
                f"step{'s' if self.steps != 1 else ''}; "
                "the starting network is handed back unchanged"
            )
        else:
            head = f"handing back the network of step {self.best_step} of {self.steps}"
            head += self._why()
        if self.interrupted:  # a script reading this line must not take it for a whole run
            head = f"interrupted after step {self.steps} (resume continues it); {head}"
        changes = [
            f"{_label(key)} {self.start[key]:.1%} -> {self.end[key]:.1%}"
            for key in self.end
            if key.endswith("_accuracy") and key in self.start and not key.startswith("val_")
        ]
        if "val_accuracy" in self.end:
            changes.insert(0, f"{_label('val_accuracy')} {self.start['val_accuracy']:.1%} -> "
                              f"{self.end['val_accuracy']:.1%}")  # fmt: skip
        elif "val_loss" in self.end and "val_loss" in self.start:  # unlabelled validation
            changes.insert(0, f"validation objective (no labels) {self.start['val_loss']:.3f} "
                              f"-> {self.end['val_loss']:.3f}")  # fmt: skip
        return head + ("; " + ", ".join(changes) if changes else "")

    def _why(self) -> str:
        """Why that step (selection.py's rule), so a step with a higher validation accuracy
        earlier in the run is not a surprise: the end is preferred while it holds up."""
        if "val_accuracy" in self.end:
            if self.best_step == self.steps:
                return " (the last step: at least as accurate on validation as the start)"
            return (" (the last step fell below the start on validation; of the steps that "
                    "did not, the one with the lowest validation loss)")  # fmt: skip
        if "val_loss" in self.end:  # unlabelled validation: the label-free objective
            if self.best_step == self.steps:
                return " (the last step: its validation objective beat the start's)"
            return " (the step whose validation objective beat the start's most)"
        return ""


class Adapter:
    """Adapt the writable parameters of ``spec`` on ``backend`` with ``optimizer``.

    ``optimizer`` is any ask/tell optimiser (:class:`~polystep_neuro.run.optimizers.AskTell`)
    created from ``layout.flatten(spec)`` (``layout`` defaults to ``ParamVector(spec)``: the
    writable parameters, unscaled).  ``train`` yields the minibatches.  ``scoring``,
    ``regularization`` and ``output`` group the options
    (:mod:`~polystep_neuro.run.loop_options`); ``on_step(adapter, record)`` is called after
    every step.  :meth:`build` makes one from the recipe's defaults and takes the options
    as flat keywords too.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        backend: Backend,
        optimizer: AskTell,
        loss: LossFn,
        train: SpikeDataset,
        *,
        layout: ParamVector | None = None,
        scoring: Scoring | None = None,
        regularization: Regularization | None = None,
        output: Output | None = None,
        on_step: StepCallback | None = None,
        **flat: Any,
    ) -> None:
        if flat:
            warnings.warn(
                f"Adapter({', '.join(f'{k}=' for k in flat)}...): pass the options grouped "
                "(scoring=Scoring(...), regularization=Regularization(...), "
                "output=Output(...)) or use Adapter.build; the flat keywords of the "
                "constructor go in the next release",
                DeprecationWarning,
                stacklevel=2,
            )
        scoring, regularization, output = group_options(scoring, regularization, output, **flat)
        self.spec, self.backend, self.optimizer = spec, backend, optimizer
        self.loss, self.train, self.on_step = loss, train, on_step
        self.layout = layout if layout is not None else ParamVector(spec)
        if optimizer.x.numel() != self.layout.dim:
            raise PolystepError(
                f"optimizer has {optimizer.x.numel()} parameters but the writable set "
                f"{list(self.layout.names)} has {self.layout.dim}"
            )
        self.scoring, self.regularization, self.output = scoring, regularization, output
        self.validation, self.test = dict(scoring.validation), dict(scoring.test)
        self.eval_every, self.checkpoint_every = scoring.every, output.checkpoint_every
        self.out_dir = output.out_dir
        if self.out_dir is not None:
            ensure_writable_dir(self.out_dir)
        self.step = 0
        self.evaluations = 0
        self.x0 = optimizer.x.detach().clone()  # the starting point (anchor, revert target)
        self.selection = Selection(self.x0, scoring.validated, scoring.label_free)
        self.start_scores: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.log = MetricsLog(self.out_dir)
        self.clock = StageClock()
        self._stop = threading.Event()
        self._low_rank = LowRankProbes.plan(optimizer, self.layout, backend)

    @classmethod
    def build(
        cls,
        backend: Backend,
        train: SpikeDataset,
        *,
        steps: int,
        settings: Settings | None = None,
        loss: LossFn | None = None,
        torch_device: torch.device | str = "cpu",
        names: Sequence[str] | None = None,
        **options: Any,
    ) -> Adapter:
        """The adaptation recipe: the network the backend actually loaded (calibrated, for a
        fixed-point device), its writable parameters (or ``names`` among them) in probe units,
        the optimiser named by ``settings`` with its defaults for a ``steps``-step run, the
        count cross-entropy.  ``options`` go to the constructor, grouped or as the flat
        keywords of :mod:`~polystep_neuro.run.loop_options` (validation, test, out_dir, ...)."""
        torch_device = renamed(options, "device", "torch_device", torch_device, "Adapter.build")
        settings = settings or Settings()
        spec = backend.spec
        layout = make_layout(spec, settings, names)
        optimizer = make_optimizer(settings, layout, layout.flatten(spec, torch_device), steps)
        loss = loss or make_loss("ce", spec.num_steps, scale=COUNT_LOGIT_SCALE)
        groups = {
            k: options.pop(k) for k in ("scoring", "regularization", "output") if k in options
        }
        on_step = options.pop("on_step", None)
        scoring, regularization, output = group_options(**groups, **options)
        return cls(
            spec, backend, optimizer, loss, train, layout=layout, scoring=scoring,
            regularization=regularization, output=output, on_step=on_step,
        )  # fmt: skip

    # ------------------------------------------------------------------ the loop
    def run(self, total_steps: int) -> AdaptResult:
        """Run until ``total_steps`` steps are complete (counting resumed ones)."""
        if total_steps < 0:
            raise PolystepError(f"steps must be >= 0, got {total_steps}")
        self.clock.start()
        if not self.start_scores:  # a fresh run (a resumed one restored them)
            self.log.truncate(-1)  # an earlier run's lines in out_dir are not this run's
            self._score_start()
        interrupted = False
        bar = ProgressBar(total_steps, self.step, self.output.description, self.output.progress)
        with bar, ctrl_c_stops(self._stop):
            while self.step < total_steps:
                if self._stop.is_set():
                    interrupted = True
                    break
                record = self._one_step(final=self.step + 1 == total_steps)
                bar.update(record)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
        if self.out_dir is not None:
            self.save_checkpoint()
        result = self._result(interrupted)
        if self.output.report is not None and not interrupted:
            self.output.report(result.summary())
        return result

    def _score_start(self) -> None:
        self.start_scores = self._scores(self.x0)
        self.selection.consider(self.x0, 0, self.start_scores)
        start = {"step": 0, **self.start_scores}
        self.history.append(start)
        self.log.write(start)

    def _result(self, interrupted: bool) -> AdaptResult:
        wall_seconds = self.clock.stop()
        step, handed_back = self._choice()
        return AdaptResult(
            spec=self.layout.to_spec(self.spec, handed_back),
            steps=self.step,
            evaluations=self.evaluations,
            interrupted=interrupted,
            wall_seconds=wall_seconds,
            history=list(self.history),
            start=dict(self.start_scores),
            end=self._scores_at(step, handed_back),
            best_step=step,
            kept_start=self.selection.enabled and step == 0,
            adapted=tuple(self.layout.names),
        )

    @property
    def low_rank_probes(self) -> bool:
        """Whether the backend takes the first layer's candidates as factors
        (:mod:`~polystep_neuro.run.low_rank`)."""
        return self._low_rank is not None

    def result_x(self) -> torch.Tensor:
        """The parameters handed back (see :mod:`~polystep_neuro.run.selection`)."""
        return self._choice()[1]

    def _choice(self) -> tuple[int, torch.Tensor]:
        return self.selection.choice(self.step, self.optimizer.x, self.history)

    def _one_step(self, final: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        inputs, targets = self.train.batch(self.step)
        candidates = self.optimizer.ask()
        losses, asked = self._losses(candidates, inputs, targets)
        self.optimizer.tell(losses)
        self.step += 1
        self.evaluations += asked * int(inputs.shape[0])
        finite = losses[torch.isfinite(losses)]
        record: dict[str, Any] = {
            "step": self.step,
            "loss_min": float(finite.min()) if finite.numel() else math.nan,
            "loss_mean": float(finite.mean()) if finite.numel() else math.nan,
            "candidates": asked,
            "evaluations": self.evaluations,
            "step_seconds": round(time.perf_counter() - t0, 4),
        }
        if final or (self.eval_every and self.step % self.eval_every == 0):
            x = self.optimizer.x
            scores = self._scores(x)
            record.update(scores)
            self.selection.consider(x, self.step, scores)
        self.history.append(record)
        self.log.write(record)
        if self.on_step is not None:
            self.on_step(self, record)
        return record

    def _losses(
        self, candidates: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The cost of each candidate on one minibatch, and how many parameter sets the
        device ran for it (the start rides along as one more set when anchored)."""
        anchor = self.regularization.anchor_weight
        asked = candidates
        if self._low_rank is not None:  # the first layer as factors; the start on its own
            counts = torch.as_tensor(self._low_rank.counts(candidates, inputs),
                                     device=candidates.device)  # fmt: skip
            if anchor > 0:
                start = self.layout.unflatten(self.x0.to(candidates).reshape(1, -1))
                teacher = torch.as_tensor(self.backend.evaluate(start, inputs))
                counts = torch.cat([counts, teacher.to(counts.device)])
        else:
            if anchor > 0:
                asked = torch.cat([candidates, self.x0.to(candidates).reshape(1, -1)])
            counts = self.backend.evaluate(self.layout.unflatten(asked), inputs)
            counts = torch.as_tensor(counts, device=candidates.device)
        targets = targets.to(candidates.device)
        if anchor > 0:
            teacher, counts = counts[-1], counts[:-1]
        losses = self.loss(counts, targets)
        if anchor > 0:
            losses = losses + anchor * distillation(counts, teacher)
        radius = self.regularization.trust_radius
        if radius is not None:
            losses = losses + outside_trust_region(candidates, self.x0, radius)
        return losses, int(candidates.shape[0]) + (1 if anchor > 0 else 0)

    def _scores(self, x: torch.Tensor) -> dict[str, float]:
        """Flat metrics of ``x`` on the validation and test sets (evaluation.flat_scores)."""
        params = self.layout.unflatten(x.reshape(1, -1))
        return flat_scores(self.backend, self.loss, params, self.validation, self.test)

    def _scores_at(self, step: int, x: torch.Tensor) -> dict[str, float]:
        """The scores of ``x``, the point of ``step``: from the log when scored there."""
        if step == 0 and self.start_scores:
            return dict(self.start_scores)
        for record in reversed(self.history):
            if record["step"] == step and "loss_min" in record:
                scored = {k: v for k, v in record.items() if k not in _STEP_KEYS}
                if scored:
                    return scored
                break
        return self._scores(x)

    def evaluate_current(self, data: SpikeDataset) -> Score:
        """Accuracy and loss of the current parameters on all of ``data``."""
        params = self.layout.unflatten(self.optimizer.x.reshape(1, -1))
        return score(self.backend, data, self.loss, params)

    def current_spec(self) -> NetworkSpec:
        return self.layout.to_spec(self.spec, self.optimizer.x)

    def request_stop(self) -> None:
        """Finish the step in flight, checkpoint, and return from ``run``."""
        self._stop.set()

    def stop_on(self, event: threading.Event) -> None:
        """Stop as on Ctrl-C once ``event`` is set: a run in a worker thread gets no
        KeyboardInterrupt, so its caller sets this instead."""
        self._stop = event

    # ------------------------------------------------------------------ persistence
    def save_checkpoint(self) -> os.PathLike[str] | None:
        """Write the loop's state and the network to hand back into ``out_dir``."""
        if self.out_dir is None:
            return None
        selection = self.selection.state_dict()
        state = {
            "step": self.step,
            "evaluations": self.evaluations,
            "wall_seconds": self.clock.seconds(),
            "names": list(self.layout.names),
            "scales": list(self.layout.scales),
            "optimizer": self.optimizer.state_dict(),
            "x0": self.x0.clone(),
            **selection,
            "start_scores": json.dumps(self.start_scores),
        }
        handed_back = self.layout.to_spec(self.spec, self.result_x())
        return checkpoint.save(self.out_dir, state, handed_back)

    def resume(self, path: str | os.PathLike[str] | None = None) -> int:
        """Load a checkpoint (default: ``out_dir``'s); returns the step it continues from."""
        path = checkpoint.find(path, self.out_dir)
        device = self.optimizer.x.device
        state = checkpoint.load(path, device, self.layout.names, self.layout.scales)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            keys = getattr(exc, "keys", ())
            if "outer" in keys:
                raise PolystepError(_low_rank_mismatch(path, self.optimizer)) from None
            # Defaults that changed to auto: the update, then the cost shaping (an auto
            # shaping follows the update, so naming the update is enough).
            changed = [
                ("update", "update rule", "heavy-ball"),
                ("shaping", "cost shaping", "shift"),
            ]
            hint = "".join(
                f"; resume with the {what} it was started with (runs started before the "
                f"default was auto: --{key} {old}, {key}='{old}')"
                for key, what, old in changed
                if key in keys and not (key == "shaping" and "update" in keys)
            )
            raise PolystepError(
                f"checkpoint {path} was written by a different optimiser or settings: {exc}" + hint
            ) from None
        self.step = int(state["step"])
        self.evaluations = int(state["evaluations"])
        self.clock.before = float(state.get("wall_seconds", 0.0))
        self.x0 = state["x0"].to(device)
        self.selection.load_state_dict(state, device)
        self.start_scores = json.loads(state["start_scores"])
        kept = self.log.truncate(self.step)
        if kept is not None:
            self.history = kept
        return self.step


def _label(key: str) -> str:
    """``val_accuracy`` -> "validation", ``clean_accuracy`` -> "clean test"."""
    name = key.removesuffix("_accuracy")
    return "validation" if name == "val" else f"{name} test"


def _low_rank_mismatch(path: os.PathLike[str], optimizer: AskTell) -> str:
    """The one line for a checkpoint whose low-rank probes setting differs from the run's."""
    was = "without" if getattr(getattr(optimizer, "subspace", None), "outer", ()) else "with"
    return (
        f"checkpoint {path} was written by a run {was} low-rank probes: resume it {was} "
        f"--low-rank-probes (low_rank_probes={was == 'with'})"
    )
