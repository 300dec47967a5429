"""Deployment recovery: put a trained model on a device and adapt it back towards itself.

``polystep_neuro.deploy(model, backend, data=(x, y))`` converts the model to what the
backend runs (snnTorch's resets and timing become the device's, every change reported),
measures the accuracy the conversion cost, and adapts the device network with forward
passes only towards the *trained model*: the model's own output counts on the user's clean
data are soft targets (the teacher runs on the host, :mod:`polystep_neuro.run.teacher`),
the labels join them when given.  A fifth of the data is held out; the network handed back
is never less accurate on it than the converted start (the loop's keep-best rule).

The recipe, in three stages on the device (all forward passes only):

1. **calibration** (:mod:`polystep_neuro.run.calibration`): layer by layer, a gain on each
   neuron's weights and an offset on its bias that bring its spike counts closest to the
   trained model's own (every neuron of a layer searched in one device call); kept only
   when the calibrated network is at least as accurate on validation as the converted one;
2. **output copies** (``output_copies=True``; ``--no-output-copies`` turns it off): every
   output neuron doubled, its copy's bias raised by a tenth of the threshold, a class
   counted over both (:mod:`polystep_neuro.run.output_copies`): the device's coarser counts
   tie more often than the model's, and the copies split most ties; kept only when
   validation does not fall;
3. **adaptation**: PolyStep on every parameter the device rewrites (weights and neuron
   biases), the teacher's soft targets plus the labels as the loss, the best network on
   validation handed back.  By default (``adapt=None``, ``deploy`` without ``--adapt`` /
   ``--no-adapt``) it runs only where stages 1 and 2 leave the device network
   ``ADAPT_FROM`` (2 points) or more, and more than one sample, below the trained model on
   validation: where they left under a point (the deployment bench's digits networks) it
   never raised held-out accuracy; on networks whose conversion cost 3 to 16 points
   (``bench.deploy_gap_bench``) it ran on 7 of 9 and raised test accuracy by a median 2.5
   points, worst -1.5 (benchmarks section 11).  ``adapt=True`` runs it always,
   ``adapt=False`` never.

Stages 1 and 3 count against one budget of parameter sets (``budget``, each set scored on
one minibatch of ``batch_size`` samples); stage 2 only scores two networks.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import user_data
from polystep_neuro.run.calibration import SAMPLES, LayerCalibration, calibrate_neurons
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.data import SpikeDataset, hold_out
from polystep_neuro.run.evaluation import counts_of
from polystep_neuro.run.interop import Change, device_writable
from polystep_neuro.run.losses import LossFn, accuracy
from polystep_neuro.run.optimizers import Settings, make_layout, polystep_candidates
from polystep_neuro.run.output_copies import with_output_copies
from polystep_neuro.run.reference import (
    Reference,
    as_reference,
    refuse_silent,
    silent_note,
    silent_outputs,
)
from polystep_neuro.run.selection import few_samples_note
from polystep_neuro.run.spike_layout import batch_first, steps_for_module
from polystep_neuro.run.teacher import (
    TEACHER_WEIGHT,
    TeacherDataset,
    teacher_concat,
    teacher_labels,
    teacher_loss,
)

DataLike = tuple[Any, Any] | Any
DEFAULT_BUDGET = 50_000  # parameter sets of one minibatch each, calibration and adaptation
SHARE_FROM = 0.02  # the smallest accuracy gap whose closed share a summary gives
ADAPT_FROM = 0.02  # by default stage 3 runs where stages 1-2 leave this gap on validation


def _at_least(gap: float, points: float) -> bool:
    """``gap`` >= ``points`` for accuracy shares held in float32, where 0.626 - 0.606 is
    0.0199999 (a gap printed "-2.0 points" was then called "under 2 points")."""
    return gap >= points - 1e-6


@dataclass
class Deployment:
    """What :func:`deploy` hands back."""

    spec: NetworkSpec  # the recovered device network
    start: NetworkSpec  # the converted device network, before recovery
    result: AdaptResult  # the adaptation stage: steps, history, start / end scores
    changes: list[str]  # what the conversion changed (and whether exactly)
    reference: dict[str, float]  # the trained model's accuracy on validation and each test set
    before: dict[str, float]  # the converted device network's accuracy on the same sets
    calibration: list[LayerCalibration] = field(default_factory=list)  # empty: not kept
    calibrated: dict[str, float] = field(default_factory=dict)  # accuracy after stage 1
    split: dict[str, float] = field(default_factory=dict)  # after the output copies (stage 2)
    output_copies: int = 1  # output neurons a class in what is handed back
    parameter_sets: int = 0  # parameter sets sent by the calibration and the adaptation
    model_labelled_val: bool = False  # validation came without labels: the model's own answers
    reference_silent: float = 0.0  # share of the data with no output spike from the model
    adaptation: str = ""  # whether stage 3 ran, and why (the line the run printed)

    @property
    def after(self) -> dict[str, float]:
        """The recovered device network's accuracy (what is handed back)."""
        return {k: v for k, v in self.result.end.items() if k.endswith("_accuracy")}

    def gap_closed(self, name: str = "val") -> float:
        """Share of the trained -> converted accuracy gap on ``name`` that recovery closed
        (nan when the conversion cost nothing there)."""
        key = f"{name}_accuracy"
        gap = self.reference[key] - self.before[key]
        return (self.after[key] - self.before[key]) / gap if gap > 0 else math.nan

    def summary(self, with_adaptation: bool = True) -> str:
        """One line per scored set: trained model, device after conversion, after recovery;
        then whether stage 3 ran (``with_adaptation``: the command printed it as it ran)."""
        silent = silent_note(self.reference_silent)
        lines = [] if silent is None else [silent]
        for key in self.reference:
            name = key.removesuffix("_accuracy")
            ref, start, end = self.reference[key], self.before[key], self.after[key]
            closed = self.gap_closed(name)
            tail = ""
            if _at_least(ref - start, SHARE_FROM):  # a gap of a sample or two means little
                tail = f", {closed:.0%} of the gap closed"
            elif math.isfinite(closed):
                tail = f" (a gap under {100 * SHARE_FROM:.0f} points: no share of it given)"
            label = "validation" if name == "val" else f"{name} test"
            if name == "val" and self.model_labelled_val:
                label += (" (no labels given: scored against the trained model's own answers, "
                          "on which its own ties count as wrong)")  # fmt: skip
            lines.append(
                f"{label}: trained {ref:.1%}, on the device {start:.1%} "
                f"({100 * (start - ref):+.1f} points), recovered {end:.1%}{tail}"
            )
        stage = [self.adaptation] if self.adaptation and with_adaptation else []
        return "\n".join([*lines, *stage])

    def to_json(self) -> dict[str, Any]:
        """What summary.json holds: accuracies, gap closed per set, stages and changes."""
        names = [key.removesuffix("_accuracy") for key in self.reference]
        closed = {name: self.gap_closed(name) for name in names}
        return {
            "summary": self.summary(),
            "trained": self.reference,
            "converted": self.before,
            "recovered": self.after,
            "gap_closed": {k: (None if math.isnan(v) else v) for k, v in closed.items()},
            "changes": self.changes,
            "calibrated": self.calibrated,
            "calibration": [asdict(c) for c in self.calibration],
            "split": self.split,
            "output_copies": self.output_copies,
            "parameter_sets": self.parameter_sets,
            "steps": self.result.steps,
            "best_step": self.result.best_step,
            "kept_start": self.result.kept_start,
            "wall_seconds": self.result.wall_seconds,
            "adaptation": self.adaptation,
        }

    def load_into(self, model: Any) -> None:
        """The recovered weights and biases into your own snnTorch module (see
        :meth:`polystep_neuro.run.api.Adaptation.load_into`)."""
        from polystep_neuro.run.interop.snntorch import load_into

        load_into(self.spec, model)


def deploy(
    model: Any,
    backend: str = "torch-sim-fixed",
    *,
    data: DataLike,
    time_steps: int | None = None,
    validation: DataLike | None = None,
    test: Mapping[str, DataLike] | None = None,
    drifted: DataLike | None = None,
    writable: Sequence[str] | str | None = None,
    budget: int = DEFAULT_BUDGET,
    calibrate: bool = True,
    output_copies: bool = True,
    adapt: bool | None = None,
    teacher_weight: float = TEACHER_WEIGHT,
    batch_size: int = 128,
    time_first: bool = False,
    val_fraction: float = 0.2,
    torch_device: str = "auto",
    timeout_s: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    seed: int = 0,
    resume: bool = False,
    report: Callable[[str], None] | None = None,
    **settings: Any,
) -> Deployment:
    """Deploy ``model`` on ``backend`` and recover what the conversion cost (module doc).

    ``time_steps``: the T an snnTorch model runs per sample.  ``data``: the user's clean
    data, ``(spikes, labels)`` or spikes alone (the teacher's top output neuron then stands
    in for the label), or another container :mod:`~polystep_neuro.run.user_data` reads;
    ``validation`` (default: ``val_fraction`` of ``data`` held out) decides what is handed
    back; ``test`` sets are only reported; ``drifted`` data the device sees now joins the
    stream with the teacher's outputs on it as targets.  ``calibrate``: stage 1; ``adapt``:
    stage 3 (None: where a gap is left, module doc), on ``writable`` (default: what the
    device rewrites at run time, every weight and neuron bias), with what ``budget``
    (parameter sets of stages 1 and 3 together) leaves.  ``output_copies``: stage 2 (module doc).
    ``settings``: :class:`~polystep_neuro.run.optimizers.Settings` fields.  ``resume``
    continues the adaptation from ``out_dir``'s checkpoint (the stages before it are
    deterministic); ``report`` gets one line per stage (default: printed when ``progress``).
    Long because its signature and docstring are the API's documentation.
    """
    from devices.readout import with_readout
    from devices.registry import backend_options, open_backend
    from simulators.torch_device import resolve_device

    if budget < 1:
        raise PolystepError(f"budget must be a positive number of parameter sets, got {budget}")
    Settings.refuse_unknown("deploy", settings)
    say = report if report is not None else (_print if progress else lambda line: None)
    notes = user_data.reused_notes(data, test or {})  # by the objects the caller passed
    if not isinstance(data, SpikeDataset):  # read once (a path): T comes from it, then data
        data = user_data.split(data, need_labels=False)
    reference = as_reference(model, steps_for_module(model, data, time_steps, time_first))
    where = resolve_device(torch_device)
    dev = with_readout(
        open_backend(backend, **backend_options(backend, device=where, timeout_s=timeout_s))
    )
    try:
        spec, changes = _converted(reference, backend, dev, writable, say)
        sets = _Sets.build(reference, spec, data, validation, test, drifted, batch_size,
                           time_first, val_fraction, seed, where)  # fmt: skip
        refuse_silent(sets.reference_silent, reference.label)
        n_val = len(sets.validation["val"])
        for note in (silent_note(sets.reference_silent, reference.label),
                     few_samples_note("val", n_val),
                     _memorised_note(sets, n_val), *notes):  # fmt: skip
            if note is not None:
                say(note)
        loss = teacher_loss(teacher_weight)
        converted, before = _loaded(dev, spec, sets, say)
        calibration, scores, used = _calibration_stage(
            dev, spec, sets, reference, before, seed, say, calibrate
        )
        split = _copies_stage(dev, sets, scores, say) if output_copies else scores
        run_stage, why = _adapts(adapt, sets.reference_scores, split, len(sets.validation["val"]))
        say(why)
        result = _adaptation_stage(
            dev, sets, Settings(seed=seed, **settings), loss, backend=backend,
            budget=budget - used if run_stage else None, where=where, out_dir=out_dir,
            progress=progress, resume=resume, say=say,
        )  # fmt: skip
    finally:
        dev.close()
    note = _load_into_note(reference, result.spec)
    if note is not None:
        say(note)
    return Deployment(
        spec=result.spec,
        start=converted,
        result=result,
        changes=[str(c) for c in changes],
        reference=sets.reference_scores,
        before=before,
        calibration=calibration,
        calibrated=scores,
        split=split,
        output_copies=result.spec.output_copies,
        parameter_sets=used + result.evaluations // sets.stream.batch_size,
        model_labelled_val=sets.model_labelled_val,
        reference_silent=sets.reference_silent,
        adaptation=why,
    )


def _memorised_note(sets: _Sets, n_val: int) -> str | None:
    """Validation the trained model gets entirely right, on labels the user gave: often the
    model's own training data (a user passed the training spikes as ``data``, and every
    choice validation makes, the stages and the hand-back, then rested on 100 % vs 100 %)."""
    if sets.model_labelled_val or n_val < 50 or sets.reference_scores["val_accuracy"] < 1.0:
        return None
    return (
        f"note: the trained model is right on all {n_val} validation samples; if --data / "
        "data= is what it was trained on, validation cannot tell the device networks apart "
        "(every choice below rests on it): give data it did not train on"
    )


def _load_into_note(reference: Reference, spec: NetworkSpec) -> str | None:
    """What ``Deployment.load_into`` would refuse for the user's own module (a layer built
    with ``bias=False`` that the recovery gave neuron biases), said when the run ends rather
    than when the user tries it."""
    if reference.module is None:
        return None
    from polystep_neuro.run.interop.snntorch import load_into

    try:
        with warnings.catch_warnings():  # the output-copies warning belongs to the real call
            warnings.simplefilter("ignore")
            load_into(spec, copy.deepcopy(reference.module))
    except SpecError as exc:
        return (f"note: the network handed back cannot go back into your module as it is "
                f"built: {exc} (the device network itself is complete)")  # fmt: skip
    return None


def _converted(
    reference: Reference, backend: str, dev: Any, writable: Sequence[str] | str | None,
    say: Callable[[str], None],
) -> tuple[NetworkSpec, list[Change]]:  # fmt: skip
    """The trained model as ``backend`` runs it, ``writable`` set, and what that changed
    (each change reported)."""
    spec, changes = reference.for_backend(backend, dev.capabilities)
    spec = spec.with_writable(_writable(spec, writable))
    for change in changes:
        say(f"conversion: {change}")
    return spec, changes


def _loaded(
    dev: Any, spec: NetworkSpec, sets: _Sets, say: Callable[[str], None]
) -> tuple[NetworkSpec, dict[str, float]]:
    """``spec`` loaded on ``dev``: the network the device holds (the deployment's start)
    and its scores, reported against the trained model's."""
    dev.load(spec)
    converted = dev.spec
    before = _scores(dev, sets, {})
    say(_line("converted", sets.reference_scores, before))
    return converted, before


def _calibration_stage(
    dev: Any,
    spec: NetworkSpec,
    sets: _Sets,
    reference: Reference,
    before: dict[str, float],
    seed: int,
    say: Callable[[str], None],
    calibrate: bool,
) -> tuple[list[LayerCalibration], dict[str, float], int]:
    """Stage 1 on ``dev``, which holds the converted ``spec`` scoring ``before``: the
    calibration kept and the scores it leaves (none and ``before`` when not ``calibrate``,
    or when validation says it lost accuracy, ``spec`` loaded again), and the parameter
    sets it used."""
    if not calibrate:
        return [], before, 0
    calibrated, calibration, used = _calibrated(dev, spec, sets, reference, seed)
    dev.load(calibrated)
    scores = _scores(dev, sets, {})
    for c in calibration:
        say(f"calibration: layer {c.layer}: spike-count error {c.error_before:.3f} -> "
            f"{c.error_after:.3f} (gains {c.gains[0]:g}..{c.gains[1]:g})")  # fmt: skip
    if scores["val_accuracy"] < before["val_accuracy"]:
        dev.load(spec)  # calibration lost accuracy on validation: start converted
        say("calibration: not kept (less accurate on validation)")
        return [], before, used
    say(_line("calibrated", sets.reference_scores, scores))
    return calibration, scores, used


def _copies_stage(
    dev: Any, sets: _Sets, scores: dict[str, float], say: Callable[[str], None]
) -> dict[str, float]:
    """Stage 2 on ``dev``, which holds the network scoring ``scores``: every output neuron
    doubled (:mod:`polystep_neuro.run.output_copies`), kept where validation does not fall
    (else the network before it loaded again); the scores it leaves."""
    before = dev.spec
    dev.load(with_output_copies(before))
    split = _scores(dev, sets, {})
    if split["val_accuracy"] < scores["val_accuracy"]:
        dev.load(before)
        say("output copies: not kept (less accurate on validation)")
        return scores
    say(_line("output copies (each output neuron doubled, a class counted over both)",
              sets.reference_scores, split))  # fmt: skip
    return split


def _adapts(
    adapt: bool | None,
    reference: Mapping[str, float],
    scores: Mapping[str, float],
    n_val: int,
) -> tuple[bool, str]:
    """Whether stage 3 runs, and the line that says why: as ``adapt`` says, or (None) where
    the network after stages 1-2 is at least ``ADAPT_FROM`` below the trained model on
    validation, by more than one of its ``n_val`` samples (one sample is no evidence, and on
    40 samples it is 2.5 points)."""
    if adapt is True:
        return True, "adaptation: runs because it was asked for (adapt=True / --adapt)"
    if adapt is False:
        return False, "adaptation: skipped because it was turned off (adapt=False / --no-adapt)"
    gap = reference["val_accuracy"] - scores["val_accuracy"]
    if _at_least(gap, ADAPT_FROM):
        if round(gap * n_val) < 2:
            return False, (f"adaptation: skipped, validation is {100 * gap:.1f} points below "
                           f"the trained model, but that is one sample of {n_val}: too few to "
                           "tell (adapt=True / --adapt runs it anyway)")  # fmt: skip
        return True, (f"adaptation: validation is {100 * gap:.1f} points below the trained "
                      "model, so PolyStep adapts the device network (adapt=False / --no-adapt "
                      "skips it)")  # fmt: skip
    return False, (f"adaptation: skipped, validation is within {100 * ADAPT_FROM:.0f} points "
                   "of the trained model (adapt=True / --adapt runs it anyway)")  # fmt: skip


def _print(line: str) -> None:
    print(line, flush=True)


def _adaptation_stage(
    dev: Any,
    sets: _Sets,
    options: Settings,
    loss: LossFn,
    *,
    backend: str,
    budget: int | None,
    where: torch.device,
    out_dir: str | os.PathLike[str] | None,
    progress: bool,
    resume: bool,
    say: Callable[[str], None],
) -> AdaptResult:
    """Stage 2 on what ``dev`` holds, for as many whole steps as ``budget`` (the parameter
    sets stage 1 left) pays for; ``budget`` None: no adaptation, the adapter only scores
    the start, which is what is handed back."""
    per_step = polystep_candidates(make_layout(dev.spec, options), options)
    steps = 0 if budget is None else max(0, budget // per_step)
    adapter = Adapter.build(
        dev, sets.stream, steps=max(steps, 1), settings=options, loss=loss,
        torch_device=where, validation=sets.validation, test=sets.test,
        out_dir=out_dir, progress=progress and budget is not None,  # no bar for no steps
    )  # fmt: skip
    if budget is not None:
        say(
            f"adapting {', '.join(adapter.layout.names)} on {backend} for {steps} steps of "
            f"{per_step} parameter sets, the trained model's outputs as soft targets"
        )
    if resume:
        step = adapter.resume()
        say(f"resuming the adaptation at step {step} of {steps} from {out_dir}")
    result = adapter.run(steps)
    if budget is not None and result.kept_start and result.steps > 0:  # say what came of it
        say(
            f"adaptation: no step beat the calibrated network on validation in {result.steps} "
            f"step{'s' if result.steps != 1 else ''}; it is handed back unchanged"
        )
    return result


def _line(what: str, reference: Mapping[str, float], scores: Mapping[str, float]) -> str:
    parts = [
        f"{key.removesuffix('_accuracy')} {scores[key]:.1%} (trained {reference[key]:.1%})"
        for key in reference
    ]
    return f"{what}: " + ", ".join(parts)


def _writable(spec: NetworkSpec, writable: Sequence[str] | str | None) -> tuple[str, ...]:
    if writable is None or len(writable) == 0:
        return device_writable(spec)
    if isinstance(writable, str):
        writable = (writable,)
    if tuple(writable) == ("all",):
        return tuple(spec.param_shapes())
    return tuple(writable)


@dataclass
class _Sets:
    """The stream (with the teacher's targets), validation and test sets of a deployment,
    and the trained model's own accuracy on the scored ones."""

    stream: TeacherDataset
    validation: dict[str, SpikeDataset]
    test: dict[str, SpikeDataset]
    reference_scores: dict[str, float]
    model_labelled_val: bool  # validation's labels are the trained model's own answers
    reference_silent: float  # share of the data on which the model's output never spiked

    @classmethod
    def build(
        cls,
        reference: Reference,
        spec: NetworkSpec,
        data: DataLike,
        validation: DataLike | None,
        test: Mapping[str, DataLike] | None,
        drifted: DataLike | None,
        batch_size: int,
        time_first: bool,
        val_fraction: float,
        seed: int,
        where: torch.device,
    ) -> _Sets:
        """Long only because it names each set it builds."""

        def arrays(
            value: DataLike, need_labels: bool = False, what: str = "the data"
        ) -> tuple[np.ndarray, np.ndarray, bool]:
            """Spikes, labels, and whether the labels are the model's own answers."""
            spikes, labels = user_data.split(value, need_labels=need_labels, what=what)
            spikes = np.asarray(torch.as_tensor(spikes).cpu())
            spikes = batch_first(spikes, spec, time_first, "the spikes", "time_steps=")
            if labels is None:  # the model's own answers stand in
                return spikes, teacher_labels(reference.counts(spikes)), True
            return spikes, user_data.labels_for(labels, len(spikes), spec.n_classes,
                                                f"the labels of {what}"), False  # fmt: skip

        window = reference.window(spec)  # the teacher's counts over what the device sees
        x, y, own_answers = arrays(data)
        teacher = reference.counts(x, window)
        if validation is None:
            kept, held = hold_out(len(y), val_fraction, seed)
            val = {"val": (x[held], y[held])}
            x, y, teacher = x[kept], y[kept], teacher[kept]
        else:
            vx, vy, own_answers = arrays(validation, what="validation")
            val = {"val": (vx, vy)}
        parts = [TeacherDataset(x, y, teacher, batch_size, seed)]
        if drifted is not None:
            dx, dy, _ = arrays(drifted, what="drifted")
            parts.append(TeacherDataset(dx, dy, reference.counts(dx, window), batch_size, seed))
        stream = parts[0] if len(parts) == 1 else teacher_concat(parts, batch_size, seed)
        tests = {name: arrays(value, need_labels=True, what=f"test set {name!r}")[:2]
                 for name, value in (test or {}).items()}  # fmt: skip
        scores = {"val_accuracy": _accuracy(reference.counts(val["val"][0]), val["val"][1])}
        for name, (tx, ty) in tests.items():
            scores[f"{name}_accuracy"] = _accuracy(reference.counts(tx), ty)

        def ds(pair: tuple[np.ndarray, np.ndarray]) -> SpikeDataset:
            return SpikeDataset(pair[0], pair[1], batch_size, seed).to(where)

        return cls(
            stream.to(where),
            {"val": ds(val["val"])},
            {name: ds(pair) for name, pair in tests.items()},
            scores,
            own_answers,  # of the set that validates
            silent_outputs(teacher),
        )


def _accuracy(counts: np.ndarray, labels: np.ndarray) -> float:
    c = torch.as_tensor(counts)[None]
    return float(accuracy(c, torch.as_tensor(labels))[0])


def _scores(backend: Any, sets: _Sets, params: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, data in {**sets.validation, **sets.test}.items():
        counts = counts_of(backend, data, params)
        out[f"{name}_accuracy"] = float(accuracy(counts, data.labels.to(counts.device))[0])
    return out


def _calibrated(
    backend: Any, spec: NetworkSpec, sets: _Sets, reference: Reference, seed: int
) -> tuple[NetworkSpec, list[LayerCalibration], int]:
    """Stage 1 on ``SAMPLES`` held-in samples of the stream (module doc)."""
    stream = sets.stream
    order = np.random.default_rng([seed, 11]).permutation(len(stream))[:SAMPLES]
    spikes = stream.spikes[torch.as_tensor(order).to(stream.spikes.device)]
    teacher = reference.spikes(spikes.cpu().numpy())
    device_lag = np.cumsum([layer.delay for layer in spec.layers])
    own_lag = np.cumsum([layer.delay for layer in reference.spec.layers])
    lags = [max(0, int(d - o)) for d, o in zip(device_lag, own_lag, strict=True)]
    return calibrate_neurons(
        backend, spec, spikes, teacher, lags=lags, batch_size=stream.batch_size
    )
