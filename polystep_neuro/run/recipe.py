"""One adaptation run, written once: prepare the data, open the device, decide with it what
is writable, load the network, build the loop, run it, close the device.

``polystep_neuro.adapt``, ``polystep-neuro adapt`` (``adapt_job``), the demo's adaptation
stage and ``polystep-neuro evaluate`` (which stops after the load) all go through here, so
the same network, data, seed and :class:`~polystep_neuro.run.run_defaults.RunConfig` give
the same run whichever of them started it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polystep_neuro.core.batch import first_non_spike
from polystep_neuro.core.contract import Backend
from polystep_neuro.core.errors import Interrupted, PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import low_rank
from polystep_neuro.run.checkpoint import CHECKPOINT_NAME, SPEC_NAME, ensure_writable_dir
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.data import SpikeDataset, concat, hold_out
from polystep_neuro.run.label_free import DEFAULT_OBJECTIVE, make_objective
from polystep_neuro.run.loop_options import Output, Regularization, Scoring
from polystep_neuro.run.optimizers import Settings, polystep_candidates
from polystep_neuro.run.run_defaults import RunConfig, anchor_weight
from polystep_neuro.run.selection import few_samples_note
from polystep_neuro.run.writable import (
    FIXED_POINT,
    Writable,
    resolve_writable,
    scoring_writable,
)

Report = Callable[[str], None]


@dataclass
class RunData:
    """Everything a run reads, as datasets."""

    stream: SpikeDataset  # the adaptation stream (minibatches)
    validation: dict[str, SpikeDataset]  # decides which network is handed back
    test: dict[str, SpikeDataset]  # only reported
    has_clean: bool  # the stream holds clean data (replay, or the built-in clean half)
    what: str = ""  # a few words for reports: where the data came from


def prepare_data(
    train: SpikeDataset,
    cfg: RunConfig,
    *,
    validation: Mapping[str, SpikeDataset] | None = None,
    replay: SpikeDataset | None = None,
    test: Mapping[str, SpikeDataset] | None = None,
    what: str = "",
) -> RunData:
    """The stream and the validation sets of a user's data: without ``validation``, a
    ``cfg.val_fraction`` of ``train`` is held out as the "drifted" one; ``replay`` (clean
    data) joins the stream but for the same fraction of it, which validates as "replay"."""
    seed = cfg.seed
    if validation is None:
        kept, held = hold_out(len(train), cfg.val_fraction, seed)
        stream, checks = train.subset(kept), {"drifted": train.subset(held)}
    else:
        stream, checks = train, dict(validation)
    if replay is not None:
        kept, held = hold_out(len(replay), cfg.val_fraction, seed)
        stream = concat(stream, replay.subset(kept), cfg.batch_size, seed)
        checks["replay"] = replay.subset(held)
    return RunData(stream, checks, dict(test or {}), replay is not None, what)


@dataclass
class Device:
    """An opened device backend with the network loaded, and what the run may change."""

    backend: Backend
    writable: Writable
    torch_device: torch.device


@contextlib.contextmanager
def opened(
    spec: NetworkSpec,
    cfg: RunConfig,
    has_clean: bool = True,
    report: Report | None = None,
    label_free: bool = False,
    scoring: bool = False,
) -> Iterator[Device]:
    """``cfg.backend`` opened, the writable set decided with what it can rewrite (the
    decision's note goes to ``report``; ``scoring``: nothing will be adapted, see
    ``scoring_writable``), ``spec`` loaded; closed on the way out."""
    from devices.readout import with_readout
    from devices.registry import backend_options, open_backend
    from simulators.torch_device import resolve_device

    where = resolve_device(cfg.torch_device)
    options = backend_options(cfg.backend, device=where, timeout_s=cfg.timeout_s)
    backend = with_readout(open_backend(cfg.backend, **options))
    try:
        caps = backend.capabilities
        if scoring:
            writable = scoring_writable(spec, caps)
        else:
            writable = resolve_writable(spec, cfg.writable, caps, has_clean, label_free)
        if writable.note and report is not None:
            report(writable.note)
        timing = chip_timing_note(spec, caps)
        if timing is not None and report is not None:
            report(timing)
        # a fixed-point device calibrates the network; Adapter.build reads it back
        backend.load(spec.with_writable(writable.loaded))
        yield Device(backend, writable, where)
    finally:
        backend.close()


def chip_timing_note(spec: NetworkSpec, caps: Any) -> str | None:
    """The note for a network in snnTorch's timing (a layer of delay 0) on the fixed-point
    simulator: it runs it, but Lava and Loihi 2 pass every layer's spikes on a step later
    and refuse it, so what it scores is not what a chip would (a user took the simulator's
    figure for the chip's)."""
    zero = [str(i) for i, layer in enumerate(spec.layers) if layer.delay == 0]
    if not zero or caps.precision != FIXED_POINT or caps.name.startswith(("lava", "loihi")):
        return None
    return (
        f"note: layer{'s' if len(zero) > 1 else ''} {', '.join(zero)} of this network "
        f"{'have' if len(zero) > 1 else 'has'} delay 0 (snnTorch's timing): {caps.name} runs "
        "it, but Lava and Loihi 2 run delay 1 only and refuse it; for what a chip runs, "
        "convert for it (polystep-neuro convert --spec FILE --out DEVICE.npz)"
    )


def _fewer_sets_note(adapter: Adapter, settings: Settings) -> str | None:
    """An optimiser that evaluates fewer sets a step than PolyStep (SPSA: 2) compared at equal
    steps spends a fraction of the forward passes: said, with the steps that would match."""
    sets = adapter.optimizer.num_candidates
    full = polystep_candidates(adapter.layout, settings)
    if sets >= full:
        return None
    return (
        f"note: {settings.optimizer} evaluates {sets} parameter sets a step where polystep, "
        f"openai-es and sep-cma evaluate {full}: at equal forward passes it needs {full // sets}"
        " times the steps"
    )


def _first_layer_on_lava(device: Device) -> str | None:
    """The note a Lava run adapting layer 0 gets: every parameter set then runs every layer,
    the slowest choice there (a user's 64-128-10, lif0.v_bias: about 30 s a step, where
    fc1.weight ran two steps in 11 s), and the printed steps do not say why."""
    caps = device.backend.capabilities
    first = [n for n in device.writable.adapted if n.split(".", 1)[0] in ("fc0", "lif0")]
    if not caps.name.startswith("lava") or not first:
        return None
    return (
        f"note: on {caps.name}, adapting layer 0 ({', '.join(first)}) runs every layer for "
        "every parameter set, its slowest case; later layers share what comes before them "
        "(e.g. --writable fc1.weight), or adapt on torch-sim-fixed, whose counts are the "
        "same bit for bit, and check the result here"
    )


def _refuse_values(data: RunData, caps: Any) -> None:
    """A fixed-point device takes 0/1 spikes only: values said before the run's banner, with
    the set that holds them (the device said it at the first step, after the banner had
    announced the run)."""
    if caps.precision != FIXED_POINT:
        return
    named = {"the training data": data.stream}
    named |= {f"validation set '{k}'": v for k, v in data.validation.items()}
    named |= {f"test set '{k}'": v for k, v in data.test.items()}
    for what, held in named.items():
        odd = first_non_spike(held.spikes)
        if odd is not None:
            raise PolystepError(
                f"{what} holds values other than 0 and 1 (e.g. {odd:g}), and "
                f"{caps.name} ({FIXED_POINT}) takes binary spikes: rate-code the values into "
                "spikes first (e.g. snntorch.spikegen.rate), or adapt on a float backend "
                "(torch-sim), which takes them as input currents"
            )


@dataclass
class Run:
    """What :func:`run_adaptation` hands back."""

    result: AdaptResult
    start: NetworkSpec  # the network the run started from, as the device ran it
    writable: Writable
    anchor: float


OnReady = Callable[[Adapter, Device, float], None]


def run_adaptation(
    spec: NetworkSpec,
    data: RunData,
    cfg: RunConfig,
    *,
    report: Report | None = None,
    on_ready: OnReady | None = None,
    report_summary: bool = True,
) -> Run:
    """Adapt ``spec`` on ``cfg.backend`` with ``data``: open, decide the writable set, load,
    build, resume (``cfg.resume``), run, close.  ``report`` gets the notes and, unless
    ``report_summary`` is False (the caller prints ``result.summary()`` itself), the one-line
    summary; ``on_ready(adapter, device, anchor)`` runs once the loop is built.  A run that
    fails leaves no empty output folder behind that it created itself."""
    fresh = cfg.out_dir is not None and not cfg.out_dir.exists()
    try:
        return _adapt(spec, data, cfg, report, on_ready, report_summary)
    except BaseException:
        if fresh:
            with contextlib.suppress(OSError):  # only an empty folder: what it holds stays
                cfg.out_dir.rmdir()
        raise


def _adapt(
    spec: NetworkSpec,
    data: RunData,
    cfg: RunConfig,
    report: Report | None,
    on_ready: OnReady | None,
    report_summary: bool,
) -> Run:
    """:func:`run_adaptation`'s steps, in order."""
    if cfg.out_dir is not None:
        ensure_writable_dir(cfg.out_dir)
        if cfg.resume and not (cfg.out_dir / CHECKPOINT_NAME).exists():
            raise PolystepError(
                f"--resume: no checkpoint in {cfg.out_dir}; run without --resume to start"
            )
        earlier = [n for n in (CHECKPOINT_NAME, SPEC_NAME) if (cfg.out_dir / n).exists()]
        if earlier and not cfg.resume and report is not None:
            report(f"note: {cfg.out_dir} holds an earlier run ({', '.join(earlier)}); this "
                   "run replaces it (--resume continues it; another --out keeps it)")  # fmt: skip
    anchor = anchor_weight(data.has_clean, cfg.anchor)
    for name, held in data.validation.items():
        note = few_samples_note(name, len(held))
        if note is not None and report is not None:
            report(note)
    # Unlabelled field data: a label-free objective on the device's outputs (run/label_free)
    loss = None if data.stream.labelled else make_objective(cfg.objective)
    if loss is None and cfg.objective != DEFAULT_OBJECTIVE and report is not None:
        report(f"note: the label-free objective {cfg.objective!r} is for data without labels; "
               "these have labels, so the run adapts to them")  # fmt: skip
    if loss is not None and report is not None:
        report(
            f"without labels: adapting to the label-free objective {cfg.objective!r} on the "
            "device's outputs (lower is better); held-out data decides on it which network "
            "is handed back"
        )
    with opened(spec, cfg, data.has_clean, report, label_free=loss is not None) as device:
        _refuse_values(data, device.backend.capabilities)
        note = _first_layer_on_lava(device)
        if note is not None and report is not None:
            report(note)
        adapter = Adapter.build(
            device.backend,
            data.stream.to(device.torch_device),
            steps=cfg.steps,
            settings=cfg.settings,
            loss=loss,
            torch_device=device.torch_device,
            names=device.writable.adapted,
            scoring=Scoring(
                _on(data.validation, device.torch_device),
                _on(data.test, device.torch_device),
                cfg.eval_every,
            ),
            regularization=Regularization(anchor, cfg.trust_radius),
            output=Output(
                cfg.out_dir,
                cfg.checkpoint_every,
                cfg.progress,
                report=report if report_summary else None,
            ),
        )
        if on_ready is not None:
            on_ready(adapter, device, anchor)
        if cfg.resume:
            step = adapter.resume()
            if report is not None:
                report(f"resuming at step {step} of {cfg.steps} from {cfg.out_dir}")
        if cfg.settings.low_rank_probes and report is not None:
            report(low_rank.describe(adapter, cfg.backend))
        note = _fewer_sets_note(adapter, cfg.settings)
        if note is not None and report is not None:
            report(note)
        result = adapter.run(cfg.steps)
    return Run(result, adapter.spec, device.writable, anchor)


def check_finished(result: AdaptResult, out_dir: Path | None) -> AdaptResult:
    """``result``, or :class:`Interrupted` (the command's exit code 130) saying how to go
    on when the run was stopped before its last step."""
    if result.interrupted:
        raise Interrupted(
            f"interrupted after step {result.steps}; checkpoint saved in {out_dir}; "
            "run the same command with --resume to continue"
        )
    return result


def _on(sets: Mapping[str, SpikeDataset], where: torch.device) -> dict[str, Any]:
    return {name: data.to(where) for name, data in sets.items()}
