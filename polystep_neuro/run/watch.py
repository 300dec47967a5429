"""Watch a deployed network's field stream: detect drift, adapt without labels, roll back.

Every batch of the stream runs on the device twice in one call: the network being served
and the network as deployed (the start).  The start's outputs feed the drift detector
(:mod:`~polystep_neuro.run.drift_detector`), so what is tested never moves with adaptation.

- **watching**: after the reference batches, each batch is tested;
- **drift**: the detector fired; the field batches are collected (``adapt_samples``);
- **adapted** or **rolled back**: a label-free run (:mod:`~polystep_neuro.run.label_free`)
  from the deployed network on the collected samples, a held-out fifth (``val_fraction``)
  choosing what is handed back; if it hands back the start, nothing changes ("rolled
  back"); otherwise the adapted network is served.  While served, its label-free objective
  on each batch is compared with the start's: worse over ``window`` batches and it is
  rolled back;
- **cleared**: the detector sees clean data again; the deployed network is served again.

What adapts: the writable set of a label-free run (:mod:`~polystep_neuro.run.writable`),
the hidden neurons' biases and thresholds (``writable=`` names the set instead).

A batch that does not fit the network (its shape, non-finite values, values other than 0/1
on a fixed-point device, a file that is no batch) is said, logged as a ``dropped`` event
naming the batch, its file and why, and skipped, whatever the stream; ``max_bad_batches``
in a row, or a stream that ends before one batch fit, stop the watcher with an error (the
stream is then not this network's).

Labels are never used to decide anything; where a batch has them, both networks'
accuracy is logged, and the summary gives it while drift was flagged and elsewhere.  The
output folder (``out_dir``) holds:

- ``watch.jsonl``: one JSON line per batch (``z``, ``phase``, accuracies) and per event
  (``drift``, ``adapted``, ``rolled_back``, ``cleared``, ``dropped``); ``watch.png`` plots
  it and ``watch_summary.json`` sums it up at the end;
- ``serving.npz``: the network being served, as the device runs it (the deployed one
  while nothing adapted is served): a spec ``evaluate --spec`` and ``NetworkSpec.load``
  read, rewritten whenever what is served changes;
- ``adapt-N/``: the N-th label-free run (``metrics.jsonl``, ``checkpoint.pt`` and
  ``adapted.npz``, the network it handed back, served only after an ``adapted`` event);
- ``watch_state.json`` and ``collected.npz``: what ``--resume`` continues from (position,
  phase, detector statistics; the field samples collected for the next adaptation).

The state is saved after every batch, so Ctrl-C (finish the batch, save, stop) and
``resume`` continue where the watcher stopped.  Ctrl-C during an adaptation stops it after
its current step and the watch with it; the cut-short network is not served, and ``resume``
reads that batch again and adapts from the start, as an unbroken watch would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.batch import first_non_spike
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import selection
from polystep_neuro.run.channel_reference import ChannelReference
from polystep_neuro.run.checkpoint import ensure_writable_dir
from polystep_neuro.run.controller import Adapter
from polystep_neuro.run.data import SpikeDataset, hold_out
from polystep_neuro.run.drift_detector import (
    DetectorSettings,
    DriftDetector,
    InputBatch,
    batch_features,
)
from polystep_neuro.run.label_free import make_objective
from polystep_neuro.run.loop_options import Output, Regularization, Scoring
from polystep_neuro.run.losses import accuracy
from polystep_neuro.run.progress import ctrl_c_stops
from polystep_neuro.run.recipe import Device, opened
from polystep_neuro.run.run_defaults import RunConfig, anchor_weight
from polystep_neuro.run.spike_layout import check_layout, either_layout
from polystep_neuro.run.streams import SocketStream, Stream, StreamBatch
from polystep_neuro.run.watch_log import LOG_NAME, read_log, stretches_line, summarize
from polystep_neuro.run.writable import FIXED_POINT

STATE_NAME = "watch_state.json"
SERVING_NAME = "serving.npz"  # the served network (a spec); version 1 kept bare arrays
BUFFER_NAME = "collected.npz"
CHANNELS_NAME = "channels.npz"  # the drift test's input reference (ChannelReference)
STATE_VERSION = 2
MAX_BAD_BATCHES = 10  # batches in a row that do not fit the network before the watch stops
Report = Callable[[str], None]


@dataclass(kw_only=True)
class WatchConfig(RunConfig):
    """A :class:`RunConfig` for the adaptations, and how the stream is watched."""

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    adapt_samples: int = 512  # field samples collected after a drift before adapting
    steps: int = 150  # adaptation steps of each label-free run
    out_dir: Path = Path("runs/watch")
    progress: bool = False  # one line per event instead of bars
    max_bad_batches: int = MAX_BAD_BATCHES  # dropped in a row: the stream is not this network's

    def __post_init__(self) -> None:
        """Checked when made, not when the first batch arrives; ``out_dir`` may be a str."""
        self.out_dir = Path(self.out_dir)
        if not isinstance(self.detector, DetectorSettings):
            raise PolystepError(
                f"detector must be DetectorSettings(...), got {type(self.detector).__name__}"
            )
        for name, low in (("adapt_samples", 2), ("steps", 1), ("batch_size", 1),
                          ("max_bad_batches", 1)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise PolystepError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise PolystepError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class _State:
    position: int = 0  # the next batch to read
    phase: str = "watching"  # watching | collecting | adapted | drifted
    adaptations: int = 0
    served_adapted: bool = False  # the serving network is an adapted one
    worse: list[float] = field(default_factory=list)  # serving - start objective, recent


class Watcher:
    """The watch loop over one network on one device; see the module docstring."""

    def __init__(self, spec: NetworkSpec, cfg: WatchConfig, report: Report | None = None):
        self.spec, self.cfg, self.report = spec, cfg, report or (lambda line: None)
        self._warn = report or print  # what must be said even to a silent iterator
        self._layout_said = False  # the note of a batch that fits both layouts, said once
        self.detector = DriftDetector(cfg.detector)
        self.state = _State()
        self.serving: dict[str, np.ndarray] = {}  # adapted values of the writable set
        self.collected: list[np.ndarray] = []
        self._stop = threading.Event()
        self.objective = make_objective(cfg.objective)
        self._network = spec.fingerprint()  # what a resumed watch must be given again
        self._stream: dict[str, Any] = {}
        self._serving_saved = False  # serving.npz holds what is served now
        self._channels_saved = False  # channels.npz holds the complete input reference
        self._dropped_events: list[dict[str, Any]] = []  # not yet yielded
        self._bad_in_a_row = 0
        self._first_bad: str | None = None  # why the first dropped batch was dropped
        ensure_writable_dir(cfg.out_dir)

    # ------------------------------------------------------------------ the loop
    def watch(self, stream: Stream) -> Iterator[dict[str, Any]]:
        """One record per batch (and one per event), until the stream ends or Ctrl-C.  A
        resume's state is read and checked here, before the first record is asked for."""
        self._stream = _stream_record(stream)
        if self.cfg.resume:
            self._load()
            stream.skip(self.state.position)
        return self._loop(stream)

    def _loop(self, stream: Stream) -> Iterator[dict[str, Any]]:
        said = "interrupted: finishing this batch and saving where the watch stands"
        with ctrl_c_stops(self._stop, said), contextlib.ExitStack() as device_open:
            stream.interrupt_on(self._stop)  # an idle source stops waiting too
            if hasattr(stream, "on_drop"):
                stream.on_drop = self._dropped
            if hasattr(stream, "on_wait"):
                stream.on_wait = self.report
            for batch in stream:
                yield from self._flush_dropped()
                why = self._misfit(batch)
                if why is None and not hasattr(self, "device"):  # opened once a batch fits
                    self.device = self._open(device_open)
                if why is None:
                    why = self._not_spikes(batch)
                if why is not None:
                    self._dropped(batch.index, why, batch.name)
                    yield from self._flush_dropped()
                    continue
                self._bad_in_a_row = 0
                try:
                    yield from self._one(batch)
                except _AdaptationStopped:  # nothing of this batch was kept: read it again
                    self._stop.set()
                    self.report(
                        f"stopped during the adaptation at batch {batch.index}, which is not "
                        "served; --resume "
                        + (
                            "reads this batch again and adapts from the start"
                            if not isinstance(stream, SocketStream)
                            else "goes on from the samples collected before it, with the "
                            "next batch that arrives: a socket has no past, so this batch and "
                            "those the socket had queued are not read again (a folder of "
                            "files is: --follow)"
                        )
                    )
                    break
                self.state.position = batch.index + 1
                self._save()
                if self._stop.is_set():
                    self.report(f"stopped after batch {batch.index}; --resume goes on")
                    break
            yield from self._flush_dropped()
        if self._first_bad is not None and self.state.position == 0 and not self._stop.is_set():
            raise PolystepError(
                f"the stream ended before one batch fit the network; the first was dropped "
                f"because {self._first_bad}"
            )

    def request_stop(self) -> None:
        self._stop.set()

    def _open(self, stack: contextlib.ExitStack) -> Device:
        """The device, with a label-free run's writable set (run.writable); its note is
        said as what happens once drift is found (nothing adapts before)."""

        def report(line: str) -> None:
            if line.startswith("without labels: adapting"):
                line = "when drift is found, " + line
            self.report(line)

        return stack.enter_context(opened(self.spec, self.cfg, False, report, label_free=True))

    def _misfit(self, batch: StreamBatch) -> str | None:
        """Why ``batch`` cannot run on this network (its layout, non-finite values), said
        with the batch and its file; None when it can."""
        try:
            check_layout(batch.spikes, self.spec, batch.time_first, _batch_what(batch))
        except PolystepError as exc:
            return str(exc)
        note = either_layout(
            batch.spikes.shape, self.spec.num_steps, batch.time_first, _batch_what(batch)
        )
        if note is not None and not self._layout_said:
            self._warn(f"{note} (said once for the stream)")
            self._layout_said = True
        return None

    def _not_spikes(self, batch: StreamBatch) -> str | None:
        """Why a fixed-point device cannot take ``batch`` (values other than 0 and 1), said
        before the device says it without the batch; None when it can."""
        caps = self.device.backend.capabilities
        if caps.precision != FIXED_POINT:
            return None
        odd = first_non_spike(batch.spikes)
        if odd is None:
            return None
        return (
            f"{_batch_what(batch)}: {caps.name} ({FIXED_POINT}) takes binary spikes (0 or 1), "
            f"these are not (e.g. {odd:g}): rate-code the values into spikes first "
            "(e.g. snntorch.spikegen.rate), or watch on a float backend (torch-sim)"
        )

    def _one(self, batch: StreamBatch) -> Iterator[dict[str, Any]]:
        spikes = torch.as_tensor(batch.spikes, dtype=torch.float32)
        counts = torch.as_tensor(self._evaluate(spikes)).to(torch.float32)
        start = counts[-1]
        seen = self.detector.observe(
            batch_features(start.numpy(), self.spec.num_steps),
            InputBatch.of(batch.spikes, start.numpy()),
        )
        record: dict[str, Any] = {
            "batch": batch.index,
            "z": _finite(seen.z),
            "out": seen.out_of_range,
            "served": "adapted" if self.state.served_adapted else "deployed",  # this batch
        }
        if batch.sent:  # the sender's own numbers (a sequence number shows a gap)
            record["sent"] = dict(batch.sent)
        if batch.labels is not None:
            labels = torch.as_tensor(batch.labels)
            record["labelled"] = int(len(labels))  # what the summary weighs this batch by
            record["start_accuracy"] = float(accuracy(start[None], labels)[0])
            record["serving_accuracy"] = float(accuracy(counts[:1], labels)[0])
        events = []
        if seen.change == "drift":
            events.append(self._event(batch.index, "drift", z=record["z"], of=seen.where))
            self.state.phase, self.collected = "collecting", []
            self.report(  # the console is quiet while the samples come in: say what for
                f"collecting {self.cfg.adapt_samples} field samples (from this batch on), then "
                f"adapting for {self.cfg.steps} steps ({self.cfg.val_fraction:.0%} of them held "
                "out, unlabelled, to decide whether the adapted network is served)"
            )
        elif seen.change == "cleared":
            events.append(self._event(batch.index, "cleared"))
            self._serve_start()
            self.state.phase = "watching"
        elif self.state.served_adapted:
            events += self._check_serving(batch.index, counts)
        collected = 0
        if self.state.phase == "collecting":
            self.collected.append(batch.spikes)
            collected = sum(len(c) for c in self.collected)
        record["phase"] = self.state.phase
        if collected >= self.cfg.adapt_samples:
            # said and logged before the run, which serves nothing for its whole length
            events.append(self._event(batch.index, "adapting", samples=collected,
                                      steps=self.cfg.steps))  # fmt: skip
        for event in [record, *events]:
            self._log(event)
            yield event
        if collected >= self.cfg.adapt_samples:
            event = self._adapt(batch.index)
            self._log(event)
            yield event

    def _evaluate(self, spikes: torch.Tensor) -> Any:
        """Counts (V, B, C): the serving network first, the deployed one last (V=1 when they
        are the same network)."""
        backend = self.device.backend
        if not self.state.served_adapted:
            return backend.evaluate({}, spikes)
        start = backend.spec.parameters()
        params = {n: np.stack([self.serving[n], start[n]]) for n in self.serving}
        return backend.evaluate(params, spikes)

    def _check_serving(self, index: int, counts: torch.Tensor) -> list[dict[str, Any]]:
        """Roll back when the served network's objective is worse than the start's on the
        last ``window`` batches (mean over them)."""
        values = self.objective(counts, torch.zeros(counts.shape[1], dtype=torch.long))
        self.state.worse.append(float(values[0] - values[-1]))
        window = self.cfg.detector.window
        self.state.worse = self.state.worse[-window:]
        if len(self.state.worse) == window and np.mean(self.state.worse) > 0:
            self._serve_start()
            self.state.phase = "drifted"
            return [self._event(index, "rolled_back", why="worse than the deployed network")]
        return []

    def _adapt(self, index: int) -> dict[str, Any]:
        """A label-free run from the deployed network on the collected field samples."""
        self.state.adaptations += 1
        spikes = np.concatenate(self.collected)
        self.collected = []
        cfg = self.cfg
        data = SpikeDataset(spikes, None, cfg.batch_size, cfg.seed)
        kept, held = hold_out(len(data), cfg.val_fraction, cfg.seed)
        device: Device = self.device
        where = device.torch_device
        adapter = Adapter.build(
            device.backend,
            data.subset(kept).to(where),
            steps=cfg.steps,
            settings=cfg.settings,
            loss=self.objective,
            torch_device=where,
            names=device.writable.adapted,
            scoring=Scoring({"field": data.subset(held).to(where)}, {}, cfg.eval_every),
            regularization=Regularization(anchor_weight(False, cfg.anchor)),
            output=Output(
                cfg.out_dir / f"adapt-{self.state.adaptations}",
                cfg.checkpoint_every,
                progress=cfg.progress,
                description=f"adapting ({len(kept)} field samples)",
            ),
        )
        result = adapter.run(cfg.steps)
        if result.interrupted:  # Ctrl-C reached the run's own handler: the watch stops too
            raise _AdaptationStopped
        before, after = result.start["val_loss"], result.end["val_loss"]
        sizes = {"samples": int(len(kept)), "held_out": int(len(held))}
        if result.best_step == 0:
            # the end is the start again: say how far the run's best point got instead
            tried = [(h["val_loss"], h["step"]) for h in result.history
                     if "val_loss" in h and h.get("step", 0) > 0]  # fmt: skip
            best, step = min(tried, default=(before, 0))
            self.state.phase = "drifted"
            return self._event(
                index, "rolled_back",
                why=f"the objective did not improve by {selection.PROXY_MARGIN:g} or more",
                objective=[before, best], best_step=step, **sizes,
            )  # fmt: skip
        values = result.spec.parameters()
        self.serving = {n: values[n] for n in adapter.layout.names}
        self.state.served_adapted, self.state.phase, self.state.worse = True, "adapted", []
        self._serving_saved = False
        return self._event(index, "adapted", step=result.best_step, objective=[before, after],
                           **sizes)  # fmt: skip

    def _serve_start(self) -> None:
        self.serving, self.state.served_adapted, self.state.worse = {}, False, []
        self._serving_saved = False

    def _dropped(self, index: int, why: str, name: str | None = None) -> None:
        """A batch that is no batch of this network: said, logged, skipped; too many in a
        row and the stream is not this network's (an error)."""
        self._bad_in_a_row += 1
        self._first_bad = self._first_bad or why
        event = self._event(index, "dropped", why=why, **({"file": name} if name else {}))
        self._log(event)
        self._dropped_events.append(event)
        limit = self.cfg.max_bad_batches
        if self._bad_in_a_row >= limit:
            raise PolystepError(
                f"{limit} batches in a row did not fit the network (max_bad_batches), the last "
                f"because {why}; is this the stream of this network? (every one is logged as "
                f"'dropped' in {self.cfg.out_dir / LOG_NAME})"
            )

    def _flush_dropped(self) -> Iterator[dict[str, Any]]:
        events, self._dropped_events = self._dropped_events, []
        yield from events

    def _event(self, index: int, name: str, **details: Any) -> dict[str, Any]:
        event = {"batch": index, "event": name, **details}
        words = ", ".join(w for k, v in details.items() if (w := _said(k, v)))
        self.report(f"batch {index}: {name.replace('_', ' ')}" + (f" ({words})" if words else ""))
        return event

    # ------------------------------------------------------------------ persistence
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.cfg.out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def served_network(self) -> NetworkSpec:
        """The network being served, as the device runs it (the deployed one unless an
        adapted one is served)."""
        loaded = self.device.backend.spec
        return loaded.with_params(self.serving) if self.serving else loaded

    def _save(self) -> None:
        out = self.cfg.out_dir
        state = {
            "version": STATE_VERSION,
            "position": self.state.position,
            "phase": self.state.phase,
            "adaptations": self.state.adaptations,
            "served_adapted": self.state.served_adapted,
            "serving": sorted(self.serving),  # the names adapted; their values: serving.npz
            "worse": self.state.worse,
            "detector": self.detector.state_dict(),
            "network": self._network,
            **self._stream,
        }
        if not self._serving_saved:  # only when what is served changed: a whole network
            tmp = out / (SERVING_NAME + ".tmp")
            self.served_network().save(tmp)
            os.replace(tmp, out / SERVING_NAME)
            self._serving_saved = True
        collected = np.concatenate(self.collected) if self.collected else np.zeros((0, 1, 1))
        _atomic_npz(out / BUFFER_NAME, {"spikes": collected})
        if not self._channels_saved:  # each reference batch, then once complete: never again
            channels = self.detector.channels
            _atomic_npz(out / CHANNELS_NAME, channels.arrays())
            self._channels_saved = channels.widen is not None
        tmp = out / (STATE_NAME + ".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, out / STATE_NAME)

    def _refuse_another_run(self, state: dict[str, Any]) -> None:
        """--resume goes on only with the network and stream the state was saved for: its
        position counts batches of that stream, its statistics that network's outputs."""
        out = self.cfg.out_dir
        if state.get("network", self._network) != self._network:
            raise PolystepError(
                f"--resume: the watcher state in {out} was saved for another network than "
                "this command gives; give the same --spec, or start a new watch without "
                "--resume (or with another --out)"
            )
        for key, what in (("stream", "--stream"), ("batch_size", "--batch-size")):
            saved, now = state.get(key), self._stream.get(key)
            if saved is not None and now is not None and saved != now:
                raise PolystepError(
                    f"--resume: the watcher state in {out} was saved reading {what} {saved}, "
                    f"this command gives {now}; give the same {what}, or start a new watch "
                    "without --resume (or with another --out)"
                )

    def _load(self) -> None:
        out = self.cfg.out_dir
        path = out / STATE_NAME
        if not path.exists():
            raise PolystepError(f"--resume: no watcher state in {out}; run without --resume")
        state = json.loads(path.read_text(encoding="utf-8"))
        version = state.get("version")
        if version not in (1, STATE_VERSION):
            raise PolystepError(f"{path} was written by another version of the watcher")
        self._refuse_another_run(state)
        self.state = _State(
            int(state["position"]), state["phase"], int(state["adaptations"]),
            bool(state["served_adapted"]), [float(v) for v in state["worse"]],
        )  # fmt: skip
        self.detector.load_state_dict(state["detector"])
        if version == 1:  # serving.npz held the adapted values themselves
            with np.load(out / SERVING_NAME, allow_pickle=False) as npz:
                self.serving = {k: npz[k] for k in npz.files}
        elif self.state.served_adapted:
            values = NetworkSpec.load(out / SERVING_NAME).parameters()
            self.serving = {n: values[n] for n in state["serving"]}
        with np.load(out / BUFFER_NAME, allow_pickle=False) as npz:
            spikes = npz["spikes"]
        if (out / CHANNELS_NAME).exists():  # a watch started before the input test has none
            with np.load(out / CHANNELS_NAME, allow_pickle=False) as npz:
                self.detector.channels = ChannelReference.from_arrays(npz)
            self._channels_saved = self.detector.channels.widen is not None
        self.collected = [spikes] if len(spikes) else []
        _truncate_log(out / LOG_NAME, self.state.position)
        self.report(f"resuming at batch {self.state.position} ({self.state.phase})")


class _AdaptationStopped(Exception):
    """Ctrl-C cut an adaptation short: its network is not served, and the batch that
    started it is left unsaved so that a resume adapts as an unbroken watch would."""


def _batch_what(batch: StreamBatch) -> str:
    """How a message names a batch: its index and, where it is one, its file."""
    return f"'spikes' of stream batch {batch.index}" + (f" ({batch.name})" if batch.name else "")


def _stream_record(stream: Any) -> dict[str, Any]:
    """What identifies a stream's batches for a resume: its file or folder and batch size
    (a socket has neither: nothing to compare)."""
    record = {"stream": getattr(stream, "source", None)}
    if getattr(stream, "batch_size", None) is not None:
        record["batch_size"] = int(stream.batch_size)
    return record


def _finite(z: float) -> float | None:
    return None if np.isnan(z) else round(z, 3)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _truncate_log(path: Path, position: int) -> None:
    """Drop what was logged for batches at or after ``position`` (they are read again)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("batch", 0) < position
    ]
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def run_watch(
    spec: NetworkSpec, stream: Stream, cfg: WatchConfig, report: Report | None = None
) -> dict[str, Any]:
    """Watch ``stream`` to its end (or Ctrl-C); write ``watch.png`` and
    ``watch_summary.json`` beside the log; returns the summary (``interrupted`` says whether
    Ctrl-C stopped it).  ``report`` gets the events and, where the stream has labels, the
    accuracy while drift was flagged and elsewhere (:func:`stretches_line`)."""
    watcher = Watcher(spec, cfg, report)
    try:
        for _ in watcher.watch(stream):
            pass
    finally:
        stream.close()
    summary = write_summary(watcher)
    reference = cfg.detector.reference_batches
    if summary["batches"] <= reference and report is not None:
        report(
            f"note: the first {reference} batches are the drift test's clean reference and "
            f"this stream held {summary['batches']}, so no batch was tested for drift "
            "(--reference-batches / reference_batches sets how many)"
        )
    line = stretches_line(summary)
    if line is not None and report is not None:
        report(line)
    return summary


def write_summary(watcher: Watcher) -> dict[str, Any]:
    """``watch.png`` and ``watch_summary.json`` beside the watcher's log, for the command and
    the API alike once a watch ends; returns the summary."""
    from polystep_neuro.run import plots

    cfg = watcher.cfg
    batches, events = read_log(cfg.out_dir)
    plots.watch_figure(cfg.out_dir / "watch.png", batches, events, cfg.detector.z_limit)
    summary = {**summarize(cfg.out_dir), "interrupted": watcher._stop.is_set()}
    (cfg.out_dir / "watch_summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    return summary


def _said(key: str, value: Any) -> str:
    """An event detail as the console line says it (the log keeps the raw values; "" for
    what the line says otherwise)."""
    if key == "objective":
        before, after = value
        return f"objective {before:.3f} -> {after:.3f} (held-out samples; lower is better)"
    if key == "why":  # a reason reads as itself: "rolled back (worse than ...)"
        return str(value)
    if key == "file":  # the reason names it already
        return ""
    if key == "samples":
        return f"on {value} samples"
    if key == "held_out":
        return f"{value} held out"
    if key == "of":  # what the z is of: "z 110, largest at input channel 20"
        return f"largest at {value}" if value else ""
    if key == "steps":
        return f"for {value} steps; no batch is served until it ends"
    if key == "best_step":
        return f"the run's best at step {value}"
    if isinstance(value, float):
        return f"{key} {value:.3g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return f"{key} " + ", ".join(f"{v:.3g}" for v in value)
    return f"{key} {value}"
