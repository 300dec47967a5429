"""``polystep_neuro.watch``: the stream watcher (:mod:`~polystep_neuro.run.watch`) as an
iterator, its options taken and checked the way the ``watch`` command takes them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.deprecation import unexpected_option
from polystep_neuro.run.drift_detector import DetectorSettings
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.run_defaults import RunConfig
from polystep_neuro.run.streams import Stream
from polystep_neuro.run.watch import Report, WatchConfig, Watcher, write_summary

DETECTOR_OPTIONS = tuple(f.name for f in fields(DetectorSettings))


class Watching:
    """What :func:`watch` hands back: an iterator of records that closes its stream at the
    end and then writes ``watch.png`` and ``watch_summary.json`` as the command does
    (:attr:`summary` holds it); ``stop()`` finishes the batch at hand, saves and ends the
    iteration (as Ctrl-C)."""

    def __init__(self, watcher: Watcher, records: Iterator[dict[str, Any]], source: Stream):
        self.watcher, self._records, self._source = watcher, records, source
        self.summary: dict[str, Any] | None = None  # once the iteration has ended

    def __iter__(self) -> Watching:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._records)
        except StopIteration:
            self.close()
            if self.summary is None:
                self.summary = write_summary(self.watcher)
            raise
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        self.watcher.request_stop()

    def close(self) -> None:
        """End the iteration and close the stream (a socket stops listening)."""
        with contextlib.suppress(Exception):
            self._records.close()
        self._source.close()

    def __enter__(self) -> Watching:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch(
    model: Any,
    stream: Stream | str | os.PathLike[str],
    backend: str = RunConfig.backend,
    *,
    time_steps: int | None = None,
    batch_size: int = 32,
    time_first: bool = False,
    follow: bool = False,
    seed: int | None = None,
    report: Report | None = None,
    **options: Any,
) -> Watching:
    """The watcher as an iterator: one record per batch and per event (see the module
    docstring).  ``model`` as for :func:`polystep_neuro.adapt` (an snnTorch module without
    ``time_steps`` runs the T of the stream's first batch, where a file or folder has one);
    ``stream`` a :mod:`~polystep_neuro.run.streams` source or what ``open_stream`` takes (a
    file, a folder, ``tcp://127.0.0.1:PORT``; ``time_first``: its spikes are (T, B, N_in);
    ``follow``: a folder is waited on for new files).  ``options`` are :class:`WatchConfig`
    fields (``out_dir``, ``adapt_samples``, ``steps``, ``max_bad_batches``, ...) and the
    detector's settings (``reference_batches``, ``z_limit``, ``window``, ``votes``), as the
    command's flags; ``seed`` seeds the adaptations.  Everything is checked here, before the
    first record is asked for; the out folder's files are in the module docstring."""
    from polystep_neuro.run.api import _as_spec, conversion_note
    from polystep_neuro.run.streams import open_stream

    cfg = _watch_config(backend, seed, options)
    source = (
        open_stream(os.fspath(stream), batch_size, follow, time_first)
        if isinstance(stream, (str, os.PathLike))
        else stream
    )
    try:
        if time_steps is None and isinstance(model, torch.nn.Module):
            time_steps = _first_batch_steps(source)
        spec, changes = _as_spec(model, time_steps, backend)
        note = conversion_note(model, backend, changes, "watch")
        if note is not None:
            (report or print)(note)
        watcher = Watcher(spec, cfg, report)
        records = watcher.watch(source)
    except BaseException:
        source.close()
        raise
    return Watching(watcher, records, source)


def _watch_config(backend: str, seed: int | None, options: dict[str, Any]) -> WatchConfig:
    """:class:`WatchConfig` from :func:`watch`'s options, the detector's settings among them
    (as the command takes them); an unknown one is a TypeError naming the known ones."""
    known = {f.name for f in fields(WatchConfig)} - {"backend"}
    unknown = [k for k in options if k not in known and k not in DETECTOR_OPTIONS]
    if unknown:
        choices = sorted(known | set(DETECTOR_OPTIONS))
        raise unexpected_option("watch", unknown[0], choices, f"it takes {', '.join(choices)}")
    tuned = {k: options.pop(k) for k in DETECTOR_OPTIONS if k in options}
    detector = options.pop("detector", None) or DetectorSettings()
    if tuned:
        if not isinstance(detector, DetectorSettings):
            raise PolystepError(
                f"detector must be DetectorSettings(...), got {type(detector).__name__}"
            )
        detector = replace(detector, **tuned)
    settings = options.pop("settings", None) or Settings()
    if seed is not None:
        settings = replace(settings, seed=seed)
    return WatchConfig(backend=backend, detector=detector, settings=settings, **options)


def _first_batch_steps(source: Stream) -> int:
    """The T of a file's or a folder's first batch, for an snnTorch module given without
    ``time_steps`` (the module does not know how many steps it runs; its data do)."""
    from polystep_neuro.run.streams import DirectoryStream, FileStream, read_batch

    spikes = None
    if isinstance(source, FileStream) and len(source.spikes):
        spikes = source.spikes
    elif isinstance(source, DirectoryStream) and (files := source._files()[source.position :]):
        with contextlib.suppress(PolystepError):
            spikes, _ = read_batch(files[0], str(files[0]), source.time_first)
    if spikes is None:
        raise PolystepError(
            "an snnTorch model needs time_steps (time steps per sample): pass time_steps=T "
            "(this stream has no readable first batch to take T from)"
        )
    return int(spikes.shape[1])
