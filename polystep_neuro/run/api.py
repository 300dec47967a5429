"""One call from a trained model to an adapted one: ``polystep_neuro.adapt(...)``.

The model may be an snnTorch module, a NIR graph (or a path to a ``.nir`` file) or a
:class:`~polystep_neuro.core.network.NetworkSpec`; the data are ``(spikes, labels)`` pairs of
arrays (spikes batch-first ``(n, T, N_in)``, or time-first with ``time_first=True`` as
snnTorch's ``spikegen`` makes them), :class:`~polystep_neuro.run.data.SpikeDataset`, or the
other containers :mod:`~polystep_neuro.run.user_data` reads (an ``.npz`` or its path, a
dict, a ``TensorDataset`` or ``DataLoader``).  The result
holds the adapted network, the run's history and the scores of the start and of the network
handed back, and goes back to snnTorch (:meth:`Adaptation.to_snntorch`,
:meth:`Adaptation.load_into`).  The run is the one recipe (:mod:`polystep_neuro.run.recipe`)
that ``polystep-neuro adapt`` and the demo use, with the same defaults
(:class:`~polystep_neuro.run.run_defaults.RunConfig`).

Words: ``time_steps`` is T, the time steps a network runs per sample; ``steps`` are
adaptation steps; ``backend`` is the device backend; ``torch_device`` is where torch runs.

    import polystep_neuro as pn
    result = pn.adapt(model, "torch-sim-fixed", train=(x_drift, y_drift), time_steps=25,
                      test={"clean": (x_clean, y_clean), "shifted": (x_test, y_test)})
    print(result.summary())
    result.load_into(model)        # the adapted weights, in your own module
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import user_data
from polystep_neuro.run.controller import AdaptResult
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.deprecation import renamed, warn
from polystep_neuro.run.label_free import NO_REPLAY
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.recipe import prepare_data, run_adaptation
from polystep_neuro.run.run_defaults import RunConfig
from polystep_neuro.run.spike_layout import batch_first, steps_for_module
from polystep_neuro.run.writable import WritableChoice

# a pair, spikes alone (no labels), an .npz (loaded or its path), ... (run.user_data)
DataLike = SpikeDataset | tuple[Any, Any] | Any


@dataclass
class Adaptation:
    """What :func:`adapt` hands back."""

    spec: NetworkSpec  # the adapted network (as the device runs it)
    start: NetworkSpec  # the network the run started from (as the device ran it)
    result: AdaptResult  # steps, forward passes, history, start / end scores
    changes: list[str]  # what was changed to fit the device's semantics (empty: nothing)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.result.history

    @property
    def before(self) -> dict[str, float]:
        """Deprecated: ``result.start`` (the scores of the starting network)."""
        warn("Adaptation.before is now Adaptation.result.start; before goes in the next release")
        return self.result.start

    @property
    def after(self) -> dict[str, float]:
        """Deprecated: ``result.end`` (the scores of the network handed back)."""
        warn("Adaptation.after is now Adaptation.result.end; after goes in the next release")
        return self.result.end

    @property
    def interrupted(self) -> bool:
        """Ctrl-C stopped the run before its last step (``resume=True`` continues it)."""
        return self.result.interrupted

    def summary(self) -> str:
        return self.result.summary()

    def to_snntorch(self) -> torch.nn.Sequential:
        """The adapted network as a new snnTorch ``nn.Sequential`` (snnTorch timing only)."""
        from polystep_neuro.run.interop.snntorch import to_snntorch

        return to_snntorch(self.spec)

    def load_into(self, model: Any) -> None:
        """Copy the adapted weights and biases into ``model`` (your own snnTorch module or its
        ``(Linear, neuron)`` pairs), layer by layer in order, whatever its attribute names
        (:func:`polystep_neuro.run.interop.snntorch.load_into`)."""
        from polystep_neuro.run.interop.snntorch import load_into

        load_into(self.spec, model)


def adapt(
    model: Any,
    backend: str = RunConfig.backend,
    *,
    train: DataLike,
    time_steps: int | None = None,
    validation: Mapping[str, DataLike] | DataLike | None = None,
    test: Mapping[str, DataLike] | None = None,
    replay: DataLike | None = None,
    writable: WritableChoice = None,
    steps: int = RunConfig.steps,
    batch_size: int = RunConfig.batch_size,
    optimizer: str = Settings.optimizer,
    torch_device: str = RunConfig.torch_device,
    time_first: bool = False,
    val_fraction: float = RunConfig.val_fraction,
    anchor: float | None = None,
    objective: str = RunConfig.objective,
    label_free: bool = False,
    teacher: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    progress: bool = True,
    seed: int = Settings.seed,
    **settings: Any,
) -> Adaptation:
    """Adapt ``model`` on ``backend`` with forward passes only; see the module docstring.

    ``time_steps`` is the T an snnTorch model runs per sample.  ``train`` is what the device
    sees now (spikes alone, without labels, run the label-free ``objective``, ``"im"`` or
    ``"entropy"``: :mod:`polystep_neuro.run.label_free`; ``label_free=True`` runs it on
    labelled ``train`` and ``validation`` without reading their labels); ``validation`` (default:
    ``val_fraction`` of ``train`` held out) decides which network is handed back; ``replay``
    (clean data) is mixed into the stream and a share of it validates too; ``test`` sets are
    only reported.  ``writable`` defaults to the model's writable set, else every weight and
    neuron bias the device can rewrite; ``"all"`` is every parameter the device can rewrite
    (:mod:`polystep_neuro.run.writable`).  Without replay the run adapts only the hidden
    neurons' biases among them and the start's own outputs anchor it (``anchor``, default 2;
    :mod:`polystep_neuro.run.run_defaults`). ``teacher`` (the trained model, run on the
    host) takes the start's place: its outputs on every sample are the soft targets the run
    holds on to (:mod:`polystep_neuro.run.teacher`); on drifted data alone that cost 3-5
    clean points where the start's anchor cost under 1 (docs/benchmarks.md, section 4).
    ``settings`` are :class:`~polystep_neuro.run.optimizers.Settings` fields (probe, rank,
    step, ``low_rank_probes=True`` for the float simulator's faster first layer, ...).
    ``out_dir`` keeps the checkpoint and the metrics; after Ctrl-C (``result.interrupted``)
    the same call with ``resume=True`` continues from it.  ``stop``: an event that stops the
    run as Ctrl-C does once set (a run in a worker thread gets no Ctrl-C).
    ``num_steps=`` and ``device=`` still work for one release (renamed ``time_steps=`` and
    ``torch_device=``).
    """
    time_steps = renamed(settings, "num_steps", "time_steps", time_steps, "adapt")
    torch_device = renamed(settings, "device", "torch_device", torch_device, "adapt")
    Settings.refuse_unknown("adapt", settings)
    if resume and out_dir is None:
        raise PolystepError("resume=True continues a run from its out_dir: give out_dir")
    if label_free and replay is not None:
        raise PolystepError(NO_REPLAY)
    notes = user_data.reused_notes(train, test or {})  # by the objects the caller passed
    if not isinstance(train, SpikeDataset):  # read once (a path): T comes from it, then data
        train = user_data.split(train, need_labels=False, what="train")
        train = (train[0], None) if label_free else train
    elif label_free:
        train = train.unlabelled()
    time_steps = steps_for_module(model, train, time_steps, time_first)
    spec, changes = _as_spec(model, time_steps, backend)
    note = conversion_note(model, backend, changes, "adapt")
    if note is not None and progress:
        _say(note)
    cfg = RunConfig(
        backend=backend, torch_device=torch_device, steps=steps, batch_size=batch_size,
        val_fraction=val_fraction, writable=writable, anchor=anchor, objective=objective,
        settings=Settings(optimizer=optimizer, seed=seed, **settings),
        out_dir=None if out_dir is None else Path(out_dir), progress=progress, resume=resume,
    )  # fmt: skip

    def ds(data: DataLike, what: str) -> SpikeDataset:
        return _dataset(data, spec, batch_size, seed, time_first, what, steps_flag(model))

    def held(data: DataLike, what: str) -> SpikeDataset:  # validation: no labels if label_free
        return ds(data, what).unlabelled() if label_free else ds(data, what)

    named = isinstance(validation, Mapping) and "spikes" not in validation  # not one set's
    if validation is None or named:
        checks = (
            None
            if validation is None
            else {k: held(v, f"validation {k!r}") for k, v in validation.items()}
        )
    else:
        checks = {"drifted": held(validation, "validation")}
    for note in notes if progress else ():
        _say(note)
    data = prepare_data(
        ds(train, "train"),
        cfg,
        validation=checks,
        replay=None if replay is None else ds(replay, "replay"),
        test={k: ds(v, f"test set {k!r}") for k, v in (test or {}).items()},
    )
    on_ready = None
    if teacher is not None:
        from polystep_neuro.run.teacher import DRIFTED_ONLY_NOTE, taught

        data, on_ready = taught(teacher, data, spec, cfg)
        if progress and not data.has_clean:
            _say(f"teacher: {DRIFTED_ONLY_NOTE}")
    if stop is not None:
        on_ready = _stopping(on_ready, stop)
    # the notes as the run goes; the summary is result.summary(), which callers print
    run = run_adaptation(
        spec, data, cfg, report=_say if progress else None, on_ready=on_ready, report_summary=False
    )
    return Adaptation(run.result.spec, run.start, run.result, changes)


def _stopping(then: Any, stop: threading.Event) -> Any:
    """The recipe's ``on_ready`` hook that also ties the loop to ``stop``."""

    def ready(adapter: Any, device: Any, anchor: float) -> None:
        adapter.stop_on(stop)
        if then is not None:
            then(adapter, device, anchor)

    return ready


def _say(line: str) -> None:
    print(line, flush=True)


def _as_spec(model: Any, time_steps: int | None, backend: str) -> tuple[NetworkSpec, list[str]]:
    """The model as a NetworkSpec, in the semantics the backend runs (changes listed)."""
    from polystep_neuro.run.reference import as_reference

    spec, changes = as_reference(model, time_steps).for_backend(backend)
    return spec, [str(c) for c in changes]


def is_spec(model: Any) -> bool:
    """A NetworkSpec or a spec file (.npz): a network as a device runs it, not a model."""
    if isinstance(model, NetworkSpec):
        return True
    return isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".npz"


def conversion_note(model: Any, backend: str, changes: list[str], call: str) -> str | None:
    """What a call that converts ``model`` for ``backend`` by itself says it changed: the
    caller saw nothing of it, and the network run is uncalibrated (a model) or not the file
    as given (a spec, which ``polystep-neuro adapt --spec`` runs as it is)."""
    approximate = [c.removesuffix(" [approximate]") for c in changes if "[approximate]" in c]
    if not approximate:
        return None
    shown = "; ".join(approximate[:2]) + ("; ..." if len(approximate) > 2 else "")
    if is_spec(model):
        return (
            f"note: {call} runs the spec converted for {backend} (the command runs the file as "
            f"given), with {len(approximate)} approximate change(s): {shown}"
        )
    return (
        f"note: {call} runs the model converted for {backend}, uncalibrated, with "
        f"{len(approximate)} approximate change(s) ({shown}); pn.deploy(model, backend, "
        "data=...) calibrates it on your data first: pass its .spec here instead"
    )


def steps_flag(model: Any) -> str:
    """What sets the T a call's network runs, for the data's T mismatch: ``time_steps=`` for
    a model it converts; a spec runs the T it was converted with (``time_steps=`` is not
    read for it: a user passed time_steps=70 and was told the same again)."""
    if is_spec(model):
        return "converting the trained model again with time_steps="
    return "time_steps="


def _dataset(
    data: DataLike,
    spec: NetworkSpec,
    batch_size: int,
    seed: int,
    time_first: bool,
    what: str,
    flag: str = "time_steps=",
) -> SpikeDataset:
    if isinstance(data, SpikeDataset):
        return data
    spikes, labels = user_data.split(data, need_labels=False, what=what)
    spikes = batch_first(
        np.asarray(torch.as_tensor(spikes).cpu()), spec, time_first, f"the spikes of {what}", flag
    )
    if labels is not None:
        labels = user_data.labels_for(labels, len(spikes), spec.n_classes, f"the labels of {what}")
    return SpikeDataset(spikes, labels, batch_size, seed)
