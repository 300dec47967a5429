"""Where a deployed network's field data comes from, one batch at a time.

Every source gives :class:`StreamBatch` es in order: spike trains ``(B, T, N_in)`` and, when
somebody happened to label them, their labels (never used to decide anything; a watcher
only reports accuracy with them).  One format everywhere: a batch is what a data file holds
(``np.savez(path, spikes=..., labels=...)``, labels optional), so

- ``FileStream``: one ``.npz`` file, cut into batches in order (a recording);
- ``DirectoryStream``: every ``.npz`` in a folder, in name order, one batch each, and with
  ``follow`` waiting for new ones (a sensor that drops a file per batch);
- ``SocketStream``: a ZeroMQ PULL socket whose every message is one such file's bytes
  (a live sensor; never pickled: ``allow_pickle=False``, sizes checked before reading).

A source's ``position`` is the index of the next batch; ``skip(n)`` jumps there on resume.
A source that waits for data ends its wait when the ``stop`` event given to
``interrupt_on`` is set, so Ctrl-C stops a watcher that is idle, not only a busy one.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polystep_neuro.core.errors import PolystepError

MAX_MESSAGE_BYTES = 256 << 20  # one socket message, and one array in it


@dataclass(frozen=True)
class StreamBatch:
    index: int  # position in the stream, from 0
    spikes: np.ndarray  # (B, T, N_in)
    labels: np.ndarray | None  # (B,) integers, or None: nobody labelled these
    time_first: bool = False  # sent as (T, B, N_in) and transposed on reading
    name: str | None = None  # the file it came from, where it is one file (errors name it)
    # the sender's own numbers for this batch: a socket message's scalar members (e.g. a
    # sequence number), logged with the batch so that a gap in what arrived can be seen
    sent: dict[str, float | int] | None = None


class Stream(Protocol):
    def __iter__(self) -> Iterator[StreamBatch]: ...

    def skip(self, count: int) -> None: ...

    def interrupt_on(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


MAX_SCALARS = 16  # a message's scalar members logged with its batch, at most


def _scalars(npz: Any) -> dict[str, float | int]:
    """The scalar numeric members of an open ``.npz`` besides 'spikes' and 'labels' (a
    sender's sequence number, a timestamp), at most :data:`MAX_SCALARS`."""
    out: dict[str, float | int] = {}
    for key in npz.files:
        if key in ("spikes", "labels") or len(out) >= MAX_SCALARS:
            continue
        value = npz[key]
        if value.ndim == 0 and np.issubdtype(value.dtype, np.number):
            out[key[:64]] = value.item()
    return out


def read_batch(
    data: bytes | Path, what: str, time_first: bool = False, limit: int | None = MAX_MESSAGE_BYTES
) -> tuple[np.ndarray, np.ndarray | None]:
    """'spikes' and optional 'labels' of one ``.npz`` (a path or its bytes); no pickle, and no
    array larger than ``limit`` bytes is read (None: a recording of the user's own, read
    whole).  ``time_first``: the file holds spikes as (T, B, N_in), as snnTorch's spikegen
    makes them."""
    spikes, labels, _ = read_batch_and_scalars(data, what, time_first, scalars=False, limit=limit)
    return spikes, labels


def read_batch_and_scalars(
    data: bytes | Path,
    what: str,
    time_first: bool = False,
    scalars: bool = True,
    limit: int | None = MAX_MESSAGE_BYTES,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float | int]]:
    """:func:`read_batch`, and the file's scalar members too (:func:`_scalars`; {} without
    ``scalars``: a data file's other arrays are not loaded), from one read."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with zipfile.ZipFile(source) as archive:
            sizes = {i.filename: i.file_size for i in archive.infolist()}
        too_big = [name for name, size in sizes.items() if limit is not None and size > limit]
        if too_big:
            raise PolystepError(
                f"{what}: {too_big[0]} is over {limit >> 20} MiB, the most one message or "
                "batch file may hold: send smaller batches (a recording of any size is read "
                "whole as one --stream FILE)"
            )
        if isinstance(source, io.BytesIO):
            source.seek(0)
        with np.load(source, allow_pickle=False) as npz:
            spikes = npz["spikes"]
            labels = npz["labels"] if "labels" in npz.files else None
            found = _scalars(npz) if scalars else {}
    except PolystepError:
        raise
    except Exception as exc:  # not a zip, a damaged member, no 'spikes'
        raise PolystepError(
            f"{what} must be an .npz holding 'spikes' (B, T, N_in) and optionally 'labels' "
            f"(B,): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    layout = "(T, B, N_in)" if time_first else "(B, T, N_in)"
    if spikes.ndim != 3 or not np.issubdtype(spikes.dtype, np.number):
        raise PolystepError(f"{what}: 'spikes' must be a numeric {layout} array")
    if time_first:
        spikes = np.ascontiguousarray(spikes.swapaxes(0, 1))
    if labels is not None and (
        labels.shape != (spikes.shape[0],) or not np.issubdtype(labels.dtype, np.integer)
    ):
        hint = ""
        if not time_first and labels.shape == (spikes.shape[1],):
            hint = (
                f" — its spikes {spikes.shape} look time-first (T, B, N_in), as snnTorch's "
                "spikegen makes them: pass --time-first (time_first=True)"
            )
        elif time_first and labels.shape == (spikes.shape[1],):
            given = (spikes.shape[1], spikes.shape[0], spikes.shape[2])
            hint = (
                f" — its spikes {given} are batch-first (B, T, N_in) already, as its "
                f"{spikes.shape[1]} labels say: drop --time-first (time_first=False)"
            )
        raise PolystepError(
            f"{what}: 'labels' must be {spikes.shape[0]} integers, one per sample{hint}"
        )
    return spikes, labels, found


class FileStream:
    """One recording: a data file's samples in order, ``batch_size`` at a time."""

    def __init__(self, path: Path, batch_size: int, time_first: bool = False) -> None:
        if batch_size < 1:
            raise PolystepError(f"the batch size must be >= 1, got {batch_size}")
        # the user's own recording: read whole, however large (batches are views of it)
        self.spikes, self.labels = read_batch(Path(path), str(path), time_first, limit=None)
        self.source = str(Path(path).resolve())  # what a resumed watch compares
        self.time_first = time_first
        self.batch_size = batch_size
        self.position = 0

    def __len__(self) -> int:
        return -(-len(self.spikes) // self.batch_size)

    def skip(self, count: int) -> None:
        self.position = count

    def interrupt_on(self, stop: threading.Event) -> None:
        pass  # a recording never waits

    def __iter__(self) -> Iterator[StreamBatch]:
        while self.position < len(self):
            first = self.position * self.batch_size
            part = slice(first, first + self.batch_size)
            labels = None if self.labels is None else self.labels[part]
            batch = StreamBatch(self.position, self.spikes[part], labels, self.time_first)
            self.position += 1
            yield batch

    def close(self) -> None:
        pass


class DirectoryStream:
    """Every ``.npz`` in ``folder`` in name order, one batch each; with ``follow``, new files
    are waited for (``poll_s`` apart) until ``idle_s`` pass without one (None: forever).

    A file that is no batch (not an .npz, no 'spikes', labels that do not match) is an
    error, unless ``on_drop`` listens: then it is told ``(index, why, file)`` and the file
    is skipped, as the watcher does, since one bad file a sensor wrote must not end a watch."""

    def __init__(
        self,
        folder: Path,
        follow: bool = False,
        poll_s: float = 0.5,
        idle_s: float | None = None,
        time_first: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.source = str(self.folder.resolve())
        self.time_first = time_first
        if not self.folder.is_dir():
            raise PolystepError(f"stream folder not found: {self.folder}")
        self.follow, self.poll_s, self.idle_s = follow, poll_s, idle_s
        self.position = 0
        self.stop = threading.Event()
        self.on_wait: Callable[[str], None] | None = None  # told when it starts waiting
        # (index, why, file): told of a file that is no batch, which is then skipped
        self.on_drop: Callable[[int, str, str], None] | None = None

    def skip(self, count: int) -> None:
        self.position = count

    def interrupt_on(self, stop: threading.Event) -> None:
        self.stop = stop

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz"))

    def __iter__(self) -> Iterator[StreamBatch]:
        waited = 0.0
        while True:
            files = self._files()
            if self.position < len(files):
                path = files[self.position]
                waited = 0.0
                try:
                    spikes, labels = read_batch(path, f"batch {self.position} ({path})",
                                                self.time_first)  # fmt: skip
                except PolystepError as exc:
                    if self.on_drop is None:
                        raise
                    self.position += 1
                    self.on_drop(self.position - 1, str(exc), str(path))
                    continue
                batch = StreamBatch(self.position, spikes, labels, self.time_first, str(path))
                self.position += 1
                yield batch
                continue
            if not self.follow or (self.idle_s is not None and waited >= self.idle_s):
                return
            if waited == 0.0 and self.on_wait is not None:  # once per wait: not a hang
                self.on_wait(f"waiting for batch {self.position} in {self.folder} (Ctrl-C stops)")
            if self.stop.wait(self.poll_s):
                return
            waited += self.poll_s

    def close(self) -> None:
        pass


class SocketStream:
    """A ZeroMQ PULL socket (senders PUSH): each message is one batch, the bytes of an
    ``.npz``.  Binds ``endpoint`` (loopback unless told otherwise, as every server here);
    stops after ``idle_s`` without a message (None: never).  A live sensor feed outlives a
    bad message: one that is not a batch is dropped and ``on_drop`` told why (the watcher
    drops a batch that does not fit the network the same way, from any stream)."""

    def __init__(
        self, endpoint: str, idle_s: float | None = None, time_first: bool = False
    ) -> None:
        import zmq

        self.time_first = time_first
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise PolystepError(f"cannot listen on {endpoint}: {exc}") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.idle_s = idle_s
        self.position = 0
        self.stop = threading.Event()
        self.on_drop: Callable[[int, str], None] | None = None  # (next index, why)

    def skip(self, count: int) -> None:
        self.position = count  # a live socket has no past to skip: numbering goes on

    def interrupt_on(self, stop: threading.Event) -> None:
        self.stop = stop

    def _wait(self) -> bool:
        """Whether a message came before ``idle_s`` passed or ``stop`` was set."""
        waited_ms, slice_ms = 0, 200
        while not self.stop.is_set():
            if self.socket.poll(slice_ms):
                return True
            waited_ms += slice_ms
            if self.idle_s is not None and waited_ms >= self.idle_s * 1000:
                return False
        return False

    def __iter__(self) -> Iterator[StreamBatch]:
        while self._wait():
            message = self.socket.recv()
            try:
                spikes, labels, sent = read_batch_and_scalars(
                    message, f"message {self.position}", self.time_first
                )
            except PolystepError as exc:
                if self.on_drop is not None:  # dropped, said and logged; the stream goes on
                    self.on_drop(self.position, str(exc))
                continue
            batch = StreamBatch(self.position, spikes, labels, self.time_first, sent=sent or None)
            self.position += 1
            yield batch

    def close(self) -> None:
        self.socket.close()


def open_stream(
    source: str,
    batch_size: int,
    follow: bool = False,
    time_first: bool = False,
    idle_s: float | None = None,
) -> Stream:
    """A file, a folder, or ``tcp://ADDR:PORT`` / ``ipc://PATH`` to listen on; ``time_first``:
    its spikes are (T, B, N_in); ``idle_s``: a socket or a followed folder ends after that
    long without a batch (None: it waits until stopped)."""
    if source.startswith(("tcp://", "ipc://")):
        from devices.security import is_local_endpoint

        if not is_local_endpoint(source):
            raise PolystepError(
                f"the watcher listens on loopback only ({source} is not): forward the sensor's "
                "port over SSH, or run the watcher on the sensor's host"
            )
        return SocketStream(source, idle_s=idle_s, time_first=time_first)
    path = Path(source)
    if path.is_dir():
        return DirectoryStream(path, follow=follow, idle_s=idle_s, time_first=time_first)
    if path.exists():
        return FileStream(path, batch_size, time_first)
    raise PolystepError(
        f"stream {source!r} not found: no such file or folder (a stream is a data file, a "
        "folder of them, or tcp://ADDR:PORT)"
    )
