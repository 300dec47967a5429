"""The hardware-in-the-loop adaptation loop.

Per step: minibatch -> ``ask()`` V candidate parameter vectors -> ``backend.evaluate`` (the
device runs forward passes only) -> loss per candidate on the host -> ``tell()``.  Only the
device-writable parameters are stepped.  The loop shows progress, appends one JSON line of
metrics per step, checkpoints every N steps (atomically), resumes bit-identically (the
minibatch is a pure function of the step index, the optimiser's state includes its RNG,
and the backend is pure), and turns Ctrl-C into "finish this step, checkpoint, stop".

Safe by construction: with a validation set, the network handed back is the best one the
run saw on validation, and never worse than the one it started from (the start itself when
no step helped, bit for bit).  Held-out test sets are scored at the start, along the way
and at the end, so what adaptation cost on clean data is always reported.  With
``anchor_weight`` the starting network's own outputs on each minibatch (one extra parameter
set per device call) are soft targets: without clean data the adapted network is pulled
towards what the start did, so it does not forget (learning without forgetting, forward
passes only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from polystep_neuro.core.contract import Backend
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.evaluation import Score, score
from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, LossFn, distillation, make_loss
from polystep_neuro.run.optimizers import AskTell, Settings, make_layout, make_optimizer
from polystep_neuro.run.params import ParamVector

CHECKPOINT_NAME = "checkpoint.pt"
SPEC_NAME = "adapted.npz"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_VERSION = 2

Datasets = Mapping[str, SpikeDataset]
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
                f"no step beat the starting network on validation in {self.steps} steps; "
                "the starting network is handed back unchanged"
            )
        else:
            head = f"handing back the network of step {self.best_step} of {self.steps}"
        changes = [
            f"{_label(key)} {self.start[key]:.1%} -> {self.end[key]:.1%}"
            for key in self.end
            if key.endswith("_accuracy") and key in self.start and not key.startswith("val_")
        ]
        if "val_accuracy" in self.end:
            changes.insert(0, f"{_label('val_accuracy')} {self.start['val_accuracy']:.1%} -> "
                              f"{self.end['val_accuracy']:.1%}")  # fmt: skip
        return head + ("; " + ", ".join(changes) if changes else "")


class Adapter:
    """Adapt the writable parameters of ``spec`` on ``backend`` with ``optimizer``.

    ``optimizer`` is any ask/tell optimiser (:class:`~polystep_neuro.run.optimizers.AskTell`)
    created from ``layout.flatten(spec)`` (``layout`` defaults to ``ParamVector(spec)``: the
    writable parameters, unscaled).  ``train`` yields the minibatches.

    ``validation`` (named datasets) decides what is handed back: every ``eval_every`` steps
    and at the last step the current parameters are scored on it (mean accuracy and loss over
    the sets).  The last point is handed back when it is at least as accurate as the start;
    otherwise the point with the lowest loss among those that are, or the start itself
    (``keep_best``).  ``test`` (named datasets) is
    scored at the start, at every validation point and at the end, for the log, the curves
    and the report; it never influences what is kept.  ``monitor`` is a shorthand for
    ``test={"monitor": monitor}``.  ``anchor_weight`` > 0 adds the distillation term towards
    the starting network's outputs on the same minibatch (see the module docstring).
    """

    def __init__(
        self,
        spec: NetworkSpec,
        backend: Backend,
        optimizer: AskTell,
        loss: LossFn,
        train: SpikeDataset,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        monitor: SpikeDataset | None = None,
        validation: Datasets | None = None,
        test: Datasets | None = None,
        keep_best: bool = True,
        anchor_weight: float = 0.0,
        trust_radius: float | None = None,
        checkpoint_every: int = 25,
        eval_every: int = 10,
        progress: bool = True,
        description: str = "adapt",
        on_step: Callable[[Adapter, dict[str, Any]], None] | None = None,
        layout: ParamVector | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        """Long only because it checks and stores its many keyword options."""
        self.spec = spec
        self.backend = backend
        self.optimizer = optimizer
        self.loss = loss
        self.train = train
        self.layout = layout if layout is not None else ParamVector(spec)
        if optimizer.x.numel() != self.layout.dim:
            raise PolystepError(
                f"optimizer has {optimizer.x.numel()} parameters but the writable set "
                f"{list(self.layout.names)} has {self.layout.dim}"
            )
        self.validation = dict(validation or {})
        self.test = dict(test or {})
        if monitor is not None:
            self.test.setdefault("monitor", monitor)
        if not anchor_weight >= 0:
            raise PolystepError(f"anchor_weight must be >= 0, got {anchor_weight}")
        self.anchor_weight = float(anchor_weight)
        if trust_radius is not None and not trust_radius > 0:
            raise PolystepError(f"trust_radius must be > 0, got {trust_radius}")
        self.trust_radius = trust_radius
        self.keep_best = bool(keep_best)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.eval_every = int(eval_every)
        self.progress = progress
        self.description = description
        self.on_step = on_step
        self.report = report
        self.step = 0
        self.evaluations = 0
        self.x0 = optimizer.x.detach().clone()  # the starting point (anchor, revert target)
        # Best point on validation: (mean accuracy, -mean loss), its parameters and step.
        self.best_key: tuple[float, float] | None = None
        self._floor = 0.0  # the start's validation accuracy
        self.best_x = self.x0.clone()
        self.best_step = 0
        self.start_scores: dict[str, float] = {}
        # Wall time of earlier runs (restored by resume) and the start of the current one, so
        # a resumed stage reports its whole time, not just the part after the restart.
        self._wall_before = 0.0
        self._run_started: float | None = None
        self.history: list[dict[str, Any]] = []
        self._stop = threading.Event()
        if self.out_dir is not None:
            ensure_writable_dir(self.out_dir)

    @classmethod
    def build(
        cls,
        backend: Backend,
        train: SpikeDataset,
        *,
        steps: int,
        settings: Settings | None = None,
        loss: LossFn | None = None,
        device: torch.device | str = "cpu",
        names: Sequence[str] | None = None,
        **options: Any,
    ) -> Adapter:
        """The adaptation recipe: the network the backend actually loaded (calibrated, for a
        fixed-point device), its writable parameters (or ``names`` among them) in probe units,
        the optimiser named by ``settings`` with its defaults for a ``steps``-step run, the
        count cross-entropy.  ``options`` go to the constructor (validation, test, ...)."""
        settings = settings or Settings()
        spec = backend.spec
        layout = make_layout(spec, settings, names)
        optimizer = make_optimizer(settings, layout, layout.flatten(spec, device), steps)
        loss = loss or make_loss("ce", spec.num_steps, scale=COUNT_LOGIT_SCALE)
        return cls(spec, backend, optimizer, loss, train, layout=layout, **options)

    # ------------------------------------------------------------------ the loop
    def run(self, total_steps: int) -> AdaptResult:
        """Run until ``total_steps`` steps are complete (counting resumed ones)."""
        if total_steps < 0:
            raise PolystepError(f"steps must be >= 0, got {total_steps}")
        self._run_started = time.perf_counter()
        if not self.start_scores:  # a fresh run (a resumed one restored them)
            self.start_scores = self._scores(self.x0)
            self._consider(self.x0, 0, self.start_scores)
            start = {"step": 0, **self.start_scores}
            self.history.append(start)
            self._log(start)
        interrupted = False
        last_accuracy: float | None = None
        bar = tqdm(
            total=total_steps,
            initial=self.step,
            desc=self.description,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        with bar, self._sigint_stops_after_step():
            while self.step < total_steps:
                if self._stop.is_set():
                    interrupted = True
                    break
                record = self._one_step(final=self.step + 1 == total_steps)
                bar.update(1)
                postfix = {"loss": f"{record['loss_min']:.3f}"}
                last_accuracy = record.get("val_accuracy", last_accuracy)
                if last_accuracy is not None:
                    postfix["val"] = f"{last_accuracy:.1%}"
                bar.set_postfix(postfix, refresh=False)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
        if self.out_dir is not None:
            self.save_checkpoint()
        self._wall_before, self._run_started = self._wall_seconds(), None
        step, handed_back = self._choice()
        result = AdaptResult(
            spec=self.layout.to_spec(self.spec, handed_back),
            steps=self.step,
            evaluations=self.evaluations,
            interrupted=interrupted,
            wall_seconds=self._wall_before,
            history=list(self.history),
            start=dict(self.start_scores),
            end=self._scores_at(step, handed_back),
            best_step=step,
            kept_start=self._validated and step == 0,
            adapted=tuple(self.layout.names),
        )
        if self.report is not None and not interrupted:
            self.report(result.summary())
        return result

    @property
    def _validated(self) -> bool:
        return bool(self.validation) and self.keep_best

    def result_x(self) -> torch.Tensor:
        """The parameters handed back (see :meth:`_choice`)."""
        return self._choice()[1]

    def _choice(self) -> tuple[int, torch.Tensor]:
        """(step, parameters) to hand back: the current point when it was scored at least as
        accurate on validation as the start (or there is no validation set); else the point
        with the lowest validation loss among those at least that accurate — the start when
        there is none.  Measured on the demo: the last point of the run scores better on the
        held-out test than the validation's pick among noisy points; the pick only guards
        against a run that ends worse than it began."""
        if not self._validated:
            return self.step, self.optimizer.x
        for record in reversed(self.history):
            if record["step"] == self.step and "val_accuracy" in record:
                if record["val_accuracy"] >= self._floor:
                    return self.step, self.optimizer.x
                break
        return self.best_step, self.best_x.clone()

    def _one_step(self, final: bool = False) -> dict[str, Any]:
        t0 = time.perf_counter()
        inputs, targets = self.train.batch(self.step)
        candidates = self.optimizer.ask()
        device = candidates.device
        asked = candidates
        if self.anchor_weight > 0:  # the starting network rides along as one more set
            asked = torch.cat([candidates, self.x0.to(candidates).reshape(1, -1)])
        counts = self.backend.evaluate(self.layout.unflatten(asked), inputs)
        counts = torch.as_tensor(counts, device=device)
        targets = targets.to(device)
        if self.anchor_weight > 0:
            teacher, counts = counts[-1], counts[:-1]
        losses = self.loss(counts, targets)
        if self.anchor_weight > 0:
            losses = losses + self.anchor_weight * distillation(counts, teacher)
        if self.trust_radius is not None:
            losses = losses + self._outside_trust_region(candidates)
        self.optimizer.tell(losses)
        self.step += 1
        self.evaluations += int(asked.shape[0]) * int(inputs.shape[0])
        finite = losses[torch.isfinite(losses)]
        record: dict[str, Any] = {
            "step": self.step,
            "loss_min": float(finite.min()) if finite.numel() else math.nan,
            "loss_mean": float(finite.mean()) if finite.numel() else math.nan,
            "candidates": int(asked.shape[0]),
            "evaluations": self.evaluations,
            "step_seconds": round(time.perf_counter() - t0, 4),
        }
        if final or (self.eval_every and self.step % self.eval_every == 0):
            x = self.optimizer.x
            scores = self._scores(x)
            record.update(scores)
            self._consider(x, self.step, scores)
        self.history.append(record)
        self._log(record)
        if self.on_step is not None:
            self.on_step(self, record)
        return record

    def _outside_trust_region(self, candidates: torch.Tensor) -> torch.Tensor:
        """A cost on each candidate's distance from the start beyond ``trust_radius`` (RMS per
        parameter, in the layout's units): steep enough that no loss gain pays for leaving."""
        assert self.trust_radius is not None
        distance = (candidates - self.x0.to(candidates)).pow(2).mean(dim=1).sqrt()
        return 100.0 * torch.relu(distance / self.trust_radius - 1.0)

    def _scores(self, x: torch.Tensor) -> dict[str, float]:
        """Flat metrics of ``x``: ``val_accuracy`` / ``val_loss`` (means over the validation
        sets), then ``val_NAME_*`` and ``NAME_*`` per validation and test set."""
        params = self.layout.unflatten(x.reshape(1, -1))
        out: dict[str, float] = {}
        val = {n: score(self.backend, d, self.loss, params) for n, d in self.validation.items()}
        if val:
            out["val_accuracy"] = sum(s.accuracy for s in val.values()) / len(val)
            out["val_loss"] = sum(s.loss for s in val.values()) / len(val)
            out.update(_flat(val, "val_") if len(val) > 1 else {})
        test = {n: score(self.backend, d, self.loss, params) for n, d in self.test.items()}
        out.update(_flat(test))
        return out

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

    def _consider(self, x: torch.Tensor, step: int, scores: Mapping[str, float]) -> None:
        """Keep ``x`` if its validation loss is the lowest so far among the points whose
        validation accuracy is at least the start's (so what is handed back is never less
        accurate on validation than the start; the loss, being less noisy than the accuracy
        of a few hundred samples, picks among them)."""
        if "val_accuracy" not in scores:
            return
        key = (-scores["val_loss"], scores["val_accuracy"])
        if self.best_key is None:  # the start
            self.best_key, self.best_x, self.best_step = key, x.detach().clone(), step
            self._floor = scores["val_accuracy"]
        elif scores["val_accuracy"] >= self._floor and key > self.best_key:
            self.best_key, self.best_x, self.best_step = key, x.detach().clone(), step

    def evaluate_current(self, data: SpikeDataset) -> Score:
        """Accuracy and loss of the current parameters on all of ``data``."""
        params = self.layout.unflatten(self.optimizer.x.reshape(1, -1))
        return score(self.backend, data, self.loss, params)

    def current_spec(self) -> NetworkSpec:
        return self.layout.to_spec(self.spec, self.optimizer.x)

    def request_stop(self) -> None:
        """Finish the step in flight, checkpoint, and return from ``run``."""
        self._stop.set()

    # ------------------------------------------------------------------ persistence
    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        with open(self.out_dir / METRICS_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _wall_seconds(self) -> float:
        running = 0.0 if self._run_started is None else time.perf_counter() - self._run_started
        return self._wall_before + running

    def save_checkpoint(self) -> Path | None:
        """Write the optimiser state, step, best point and the network to hand back
        atomically into ``out_dir``."""
        if self.out_dir is None:
            return None
        state = {
            "version": _CHECKPOINT_VERSION,
            "step": self.step,
            "evaluations": self.evaluations,
            "wall_seconds": self._wall_seconds(),
            "names": list(self.layout.names),
            "scales": list(self.layout.scales),
            "optimizer": self.optimizer.state_dict(),
            "x0": self.x0.clone(),
            "best_x": self.best_x.clone(),
            "best_step": self.best_step,
            "best_key": None if self.best_key is None else list(self.best_key),
            "floor": self._floor,
            "start_scores": json.dumps(self.start_scores),
        }
        path = self.out_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        spec_tmp = self.out_dir / (SPEC_NAME + ".tmp")
        self.layout.to_spec(self.spec, self.result_x()).save(spec_tmp)
        os.replace(spec_tmp, self.out_dir / SPEC_NAME)
        return path

    def resume(self, path: str | os.PathLike[str] | None = None) -> int:
        """Load a checkpoint (default: ``out_dir``'s); returns the step it continues from."""
        if path is None:
            if self.out_dir is None:
                raise PolystepError("resume needs a checkpoint path or an out_dir")
            path = self.out_dir / CHECKPOINT_NAME
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.exists():
            raise PolystepError(f"no checkpoint to resume from at {path}")
        device = self.optimizer.x.device
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise PolystepError(f"cannot read checkpoint {path}: {exc}") from None
        if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise PolystepError(f"checkpoint {path} has unsupported version {version}")
        if state.get("names") != list(self.layout.names):
            raise PolystepError(
                f"checkpoint {path} adapts {state.get('names')}, but this run adapts "
                f"{list(self.layout.names)}"
            )
        if state.get("scales") != list(self.layout.scales):
            raise PolystepError(
                f"checkpoint {path} was written with parameter scales {state.get('scales')}, "
                f"this run uses {list(self.layout.scales)} (different scaling or spec)"
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PolystepError(
                f"checkpoint {path} was written by a different optimiser or settings: {exc}"
            ) from None
        self.step = int(state["step"])
        self.evaluations = int(state["evaluations"])
        self._wall_before = float(state.get("wall_seconds", 0.0))
        self.x0 = state["x0"].to(device)
        self.best_x = state["best_x"].to(device)
        self.best_step = int(state["best_step"])
        key = state["best_key"]
        self.best_key = None if key is None else (float(key[0]), float(key[1]))
        self._floor = float(state["floor"])
        self.start_scores = json.loads(state["start_scores"])
        self._truncate_log(self.step)
        return self.step

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed log has no duplicates."""
        if self.out_dir is None or not (self.out_dir / METRICS_NAME).exists():
            return
        log = self.out_dir / METRICS_NAME
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        log.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self.history = [json.loads(k) for k in kept]

    # ------------------------------------------------------------------ Ctrl-C
    @contextlib.contextmanager
    def _sigint_stops_after_step(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, checkpoint, stop.  Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt
            self._stop.set()
            tqdm.write(
                "interrupted: finishing this step and saving a checkpoint "
                "(Ctrl-C again to abort without saving)"
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


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


def _flat(scores: Mapping[str, Score], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for name, sc in scores.items():
        out[f"{prefix}{name}_accuracy"] = sc.accuracy
        out[f"{prefix}{name}_loss"] = sc.loss
    return out


def _label(key: str) -> str:
    """``val_accuracy`` -> "validation", ``clean_accuracy`` -> "clean test"."""
    name = key.removesuffix("_accuracy")
    return "validation" if name == "val" else f"{name} test"
