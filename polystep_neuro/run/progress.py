"""What a person sees of a running loop and how they stop it: the progress bar, the stage's
wall time across resumes, and Ctrl-C as "finish this step, checkpoint, stop"."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm


class ProgressBar:
    """A tqdm bar over the run's steps showing the last minibatch loss and validation
    accuracy; a context manager, disabled with ``enabled=False``.  Where stderr is not a
    terminal (a log file, a pipe) a bar would write one carriage-return update per step into
    it: there it writes a plain line at every tenth of the run instead."""

    def __init__(self, total: int, initial: int, description: str, enabled: bool) -> None:
        self._lines = enabled and not _is_terminal(sys.stderr)
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            disable=not enabled or self._lines,
            dynamic_ncols=True,
        )
        self._total, self._done, self._description = total, initial, description
        self._initial = initial
        self._every = max(1, total // 10)
        self._started = time.perf_counter()
        self._accuracy: float | None = None
        hint = busy_machine_hint() if enabled else None
        if hint:
            tqdm.write(hint, file=sys.stderr)  # beside the bar, out of the results on stdout

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, record: dict[str, Any]) -> None:
        self._bar.update(1)
        self._done += 1
        postfix = {"loss": f"{record['loss_min']:.3f}"}
        self._accuracy = record.get("val_accuracy", self._accuracy)
        if self._accuracy is not None:
            postfix["val"] = f"{self._accuracy:.1%}"
        self._bar.set_postfix(postfix, refresh=False)
        if self._lines and (self._done % self._every == 0 or self._done == self._total):
            self._line(postfix)

    def _line(self, postfix: dict[str, str]) -> None:
        elapsed = time.perf_counter() - self._started
        shown = ", ".join(f"{k} {v}" for k, v in postfix.items())
        took = f"{elapsed:.1f}" if elapsed < 10 else f"{elapsed:.0f}"  # a short run read "0 s"
        # the time left at this run's pace (a user's 40 steps took 7 minutes, and the lines
        # said only how long it had run)
        done, left = self._done - self._initial, self._total - self._done
        eta = f", about {_duration(elapsed / done * left)} left" if done and left else ""
        print(
            f"{self._description}: step {self._done}/{self._total}, {shown}, {took} s this "
            f"run{eta}",
            file=sys.stderr,
            flush=True,
        )


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: 45 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or a stand-in stream
        return False


def busy_machine_hint() -> str | None:
    """One line when torch runs several threads on a machine already as busy as it has
    cores: the threads then wait for each other and a run can take many times as long (a new
    user's demo went from 148 s to an estimated two hours); None otherwise."""
    import torch

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return None
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if threads < 2 or load < cores:
        return None
    return (
        f"note: the machine is busy (load {load:.1f} on {cores} cores) and torch runs {threads} "
        "threads, which then wait for each other; if the steps are slow, Ctrl-C and rerun "
        "with OMP_NUM_THREADS=1 and --resume"
    )


class StageClock:
    """Wall time of a stage, counting the runs before a resume (restored from a checkpoint)
    and the one in progress, so a resumed stage reports its whole time."""

    def __init__(self) -> None:
        self.before = 0.0
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> float:
        self.before, self._started = self.seconds(), None
        return self.before

    def seconds(self) -> float:
        running = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.before + running


@contextlib.contextmanager
def ctrl_c_stops(
    stop: threading.Event,
    said: str = "interrupted: finishing this step and saving a checkpoint",
) -> Iterator[None]:
    """First Ctrl-C sets ``stop`` (the loop finishes its step, checkpoints, returns) and
    prints ``said``.  Second: abort at once.  Signals reach only the main thread; elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        tqdm.write(f"{said} (Ctrl-C again to abort without saving)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
