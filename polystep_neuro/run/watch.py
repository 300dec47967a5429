"""Watch a deployed network's field stream: detect drift, adapt without labels, roll back.

Every batch of the stream runs on the device twice in one call: the network being served
and the network as deployed (the start).  The start's outputs feed the drift detector
(:mod:`~polystep_neuro.run.drift_detector`), so what is tested never moves with adaptation.

- **watching**: after the reference batches, each batch is tested;
- **drift**: the detector fired; the field batches are collected (``adapt_samples``);
- **adapted** or **rolled back**: a label-free run (:mod:`~polystep_neuro.run.label_free`)
  from the deployed network on the collected samples, a held-out fifth choosing what is
  handed back; if it hands back the start, nothing changes ("rolled back"); otherwise the
  adapted network is served.  While served, its label-free objective on each batch is
  compared with the start's: worse over ``window`` batches and it is rolled back;
- **cleared**: the detector sees clean data again; the deployed network is served again.

Labels are never used to decide anything; where a batch has them, both networks' accuracy
is logged.  Every batch and event goes to ``watch.jsonl``; ``watch.png`` plots them; the
state is saved after every batch, so Ctrl-C (finish the batch, save, stop) and ``resume``
continue where the watcher stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.checkpoint import ensure_writable_dir
from polystep_neuro.run.controller import Adapter
from polystep_neuro.run.data import SpikeDataset, hold_out
from polystep_neuro.run.drift_detector import DetectorSettings, DriftDetector, batch_features
from polystep_neuro.run.label_free import make_objective
from polystep_neuro.run.loop_options import Output, Regularization, Scoring
from polystep_neuro.run.losses import accuracy
from polystep_neuro.run.progress import ctrl_c_stops
from polystep_neuro.run.recipe import Device, opened
from polystep_neuro.run.run_defaults import RunConfig, anchor_weight
from polystep_neuro.run.spike_layout import check_layout
from polystep_neuro.run.streams import Stream, StreamBatch

LOG_NAME = "watch.jsonl"
STATE_NAME = "watch_state.json"
SERVING_NAME = "serving.npz"
BUFFER_NAME = "collected.npz"
STATE_VERSION = 1
Report = Callable[[str], None]


@dataclass(kw_only=True)
class WatchConfig(RunConfig):
    """A :class:`RunConfig` for the adaptations, and how the stream is watched."""

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    adapt_samples: int = 512  # field samples collected after a drift before adapting
    steps: int = 150  # adaptation steps of each label-free run
    out_dir: Path = Path("runs/watch")
    progress: bool = False  # one line per event instead of bars


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
        self.detector = DriftDetector(cfg.detector)
        self.state = _State()
        self.serving: dict[str, np.ndarray] = {}  # adapted values of the writable set
        self.collected: list[np.ndarray] = []
        self._stop = threading.Event()
        self.objective = make_objective(cfg.objective)
        self._network = spec.fingerprint()  # what a resumed watch must be given again
        self._stream: dict[str, Any] = {}
        ensure_writable_dir(cfg.out_dir)

    # ------------------------------------------------------------------ the loop
    def watch(self, stream: Stream) -> Iterator[dict[str, Any]]:
        """One record per batch (and one per event), until the stream ends or Ctrl-C."""
        self._stream = _stream_record(stream)
        if self.cfg.resume:
            self._load()
            stream.skip(self.state.position)
        with ctrl_c_stops(self._stop), contextlib.ExitStack() as device_open:
            stream.interrupt_on(self._stop)  # an idle source stops waiting too
            if hasattr(stream, "on_drop"):
                stream.on_drop = self._dropped
            if hasattr(stream, "on_wait"):
                stream.on_wait = self.report
            for batch in stream:
                what = f"'spikes' of stream batch {batch.index}" + (
                    f" ({batch.name})" if batch.name else ""
                )
                try:
                    check_layout(batch.spikes, self.spec, batch.time_first, what)
                except PolystepError as exc:
                    if not getattr(stream, "drops_bad_batches", False):
                        raise  # a file or folder the user named: the error is theirs to fix
                    self._dropped(batch.index, str(exc))
                    continue
                if not hasattr(self, "device"):  # opened once a batch fits the network
                    self.device = device_open.enter_context(
                        opened(self.spec, self.cfg, False, self.report, label_free=True)
                    )
                yield from self._one(batch)
                self.state.position = batch.index + 1
                self._save()
                if self._stop.is_set():
                    self.report(f"stopped after batch {batch.index}; --resume goes on")
                    break

    def request_stop(self) -> None:
        self._stop.set()

    def _one(self, batch: StreamBatch) -> Iterator[dict[str, Any]]:
        spikes = torch.as_tensor(batch.spikes, dtype=torch.float32)
        counts = torch.as_tensor(self._evaluate(spikes)).to(torch.float32)
        start = counts[-1]
        seen = self.detector.observe(batch_features(start.numpy(), self.spec.num_steps))
        record: dict[str, Any] = {
            "batch": batch.index,
            "z": _finite(seen.z),
            "out": seen.out_of_range,
        }
        if batch.labels is not None:
            labels = torch.as_tensor(batch.labels)
            record["start_accuracy"] = float(accuracy(start[None], labels)[0])
            record["serving_accuracy"] = float(accuracy(counts[:1], labels)[0])
        events = []
        if seen.change == "drift":
            events.append(self._event(batch.index, "drift", z=record["z"]))
            self.state.phase, self.collected = "collecting", []
            self.report(  # the console is quiet while the samples come in: say what for
                f"collecting {self.cfg.adapt_samples} field samples (from this batch on), then "
                f"adapting for {self.cfg.steps} steps"
            )
        elif seen.change == "cleared":
            events.append(self._event(batch.index, "cleared"))
            self._serve_start()
            self.state.phase = "watching"
        elif self.state.served_adapted:
            events += self._check_serving(batch.index, counts)
        if self.state.phase == "collecting":
            self.collected.append(batch.spikes)
            if sum(len(c) for c in self.collected) >= self.cfg.adapt_samples:
                events.append(self._adapt(batch.index))
        record["phase"] = self.state.phase
        self._log(record)
        yield record
        for event in events:
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
        before, after = result.start["val_loss"], result.end["val_loss"]
        if result.best_step == 0:
            self.state.phase = "drifted"
            return self._event(index, "rolled_back", why="the objective did not improve",
                               objective=[before, after])  # fmt: skip
        values = result.spec.parameters()
        self.serving = {n: values[n] for n in adapter.layout.names}
        self.state.served_adapted, self.state.phase, self.state.worse = True, "adapted", []
        return self._event(index, "adapted", step=result.best_step, objective=[before, after],
                           samples=int(len(kept)))  # fmt: skip

    def _serve_start(self) -> None:
        self.serving, self.state.served_adapted, self.state.worse = {}, False, []

    def _dropped(self, index: int, why: str) -> None:
        """A live source's message that is no batch of this network: said, logged, skipped."""
        self._log(self._event(index, "dropped", why=why))

    def _event(self, index: int, name: str, **details: Any) -> dict[str, Any]:
        event = {"batch": index, "event": name, **details}
        words = ", ".join(_said(k, v) for k, v in details.items())
        self.report(f"batch {index}: {name.replace('_', ' ')}" + (f" ({words})" if words else ""))
        return event

    # ------------------------------------------------------------------ persistence
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.cfg.out_dir / LOG_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _save(self) -> None:
        out = self.cfg.out_dir
        state = {
            "version": STATE_VERSION,
            "position": self.state.position,
            "phase": self.state.phase,
            "adaptations": self.state.adaptations,
            "served_adapted": self.state.served_adapted,
            "worse": self.state.worse,
            "detector": self.detector.state_dict(),
            "network": self._network,
            **self._stream,
        }
        _atomic_npz(out / SERVING_NAME, self.serving)
        collected = np.concatenate(self.collected) if self.collected else np.zeros((0, 1, 1))
        _atomic_npz(out / BUFFER_NAME, {"spikes": collected})
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
        if state.get("version") != STATE_VERSION:
            raise PolystepError(f"{path} was written by another version of the watcher")
        self._refuse_another_run(state)
        self.state = _State(
            int(state["position"]), state["phase"], int(state["adaptations"]),
            bool(state["served_adapted"]), [float(v) for v in state["worse"]],
        )  # fmt: skip
        self.detector.load_state_dict(state["detector"])
        with np.load(out / SERVING_NAME, allow_pickle=False) as npz:
            self.serving = {k: npz[k] for k in npz.files}
        with np.load(out / BUFFER_NAME, allow_pickle=False) as npz:
            spikes = npz["spikes"]
        self.collected = [spikes] if len(spikes) else []
        _truncate_log(out / LOG_NAME, self.state.position)
        self.report(f"resuming at batch {self.state.position} ({self.state.phase})")


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


def read_log(out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(batch records, events) of a watcher's log (none when nothing was logged yet)."""
    path = out_dir / LOG_NAME
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if "event" not in r], [r for r in records if "event" in r]


def summarize(out_dir: Path) -> dict[str, Any]:
    """Counts of events and, over the batches that had labels, both networks' accuracy."""
    batches, events = read_log(out_dir)
    labelled = [b for b in batches if "serving_accuracy" in b]
    summary: dict[str, Any] = {
        "batches": len(batches),
        "events": {
            name: sum(e["event"] == name for e in events)
            for name in ("drift", "adapted", "rolled_back", "cleared", "dropped")
        },  # fmt: skip
    }
    if labelled:
        summary["serving_accuracy"] = float(np.mean([b["serving_accuracy"] for b in labelled]))
        summary["start_accuracy"] = float(np.mean([b["start_accuracy"] for b in labelled]))
    return summary


def run_watch(
    spec: NetworkSpec, stream: Stream, cfg: WatchConfig, report: Report | None = None
) -> dict[str, Any]:
    """Watch ``stream`` to its end (or Ctrl-C); write ``watch.png`` and
    ``watch_summary.json`` beside the log; returns the summary (``interrupted`` says whether
    Ctrl-C stopped it)."""
    from polystep_neuro.run import plots

    watcher = Watcher(spec, cfg, report)
    try:
        for _ in watcher.watch(stream):
            pass
    finally:
        stream.close()
    batches, events = read_log(cfg.out_dir)
    plots.watch_figure(cfg.out_dir / "watch.png", batches, events, cfg.detector.z_limit)
    summary = {**summarize(cfg.out_dir), "interrupted": watcher._stop.is_set()}
    (cfg.out_dir / "watch_summary.json").write_text(json.dumps(summary, indent=2), "utf-8")
    return summary


def watch(
    model: Any,
    stream: Stream | str,
    backend: str = RunConfig.backend,
    *,
    time_steps: int | None = None,
    batch_size: int = 32,
    time_first: bool = False,
    report: Report | None = None,
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """The watcher as an iterator: one record per batch and per event (see the module
    docstring).  ``model`` as for :func:`polystep_neuro.adapt`; ``stream`` a
    :mod:`~polystep_neuro.run.streams` source or what ``open_stream`` takes (a file, a
    folder, ``tcp://127.0.0.1:PORT``; ``time_first``: its spikes are (T, B, N_in));
    ``options`` are :class:`WatchConfig` fields."""
    from polystep_neuro.run.api import _as_spec
    from polystep_neuro.run.streams import open_stream

    spec, _ = _as_spec(model, time_steps, backend)
    cfg = WatchConfig(backend=backend, **options)
    source = (
        open_stream(stream, batch_size, time_first=time_first)
        if isinstance(stream, str)
        else stream
    )
    try:
        yield from Watcher(spec, cfg, report).watch(source)
    finally:
        source.close()


def _said(key: str, value: Any) -> str:
    """An event detail as the console line says it (the log keeps the raw values)."""
    if key == "objective":
        before, after = value
        return f"objective {before:.3f} -> {after:.3f} (held-out samples; lower is better)"
    if key == "why":  # a reason reads as itself: "rolled back (worse than ...)"
        return str(value)
    if isinstance(value, float):
        return f"{key} {value:.3g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return f"{key} " + ", ".join(f"{v:.3g}" for v in value)
    return f"{key} {value}"
