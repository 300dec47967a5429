"""Host side of a device server process: start ``python -m devices.server``, learn its
endpoint from its startup line, stop it (or its whole process group).

The spawn contract lives here too: the line a ready server prints (``STARTUP_PREFIX``,
parsed with ``STARTUP_RE``) and ``PARENT_ENV``, the variable that tells a spawned server
which pid must stay its parent (``devices.lava_local`` exits when that host dies).
Standard library only: the Lava env imports the constants.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polystep_neuro.core.errors import DeviceUnavailable

__all__ = [
    "PARENT_ENV",
    "STARTUP_PREFIX",
    "STARTUP_RE",
    "ServerProcess",
    "start_server_process",
]

log = logging.getLogger(__name__)

STARTUP_PREFIX = "polystep-neuro device server:"
STARTUP_RE = re.compile(r"^polystep-neuro device server: backend=(\S+) listening on (\S+)\s*$")
PARENT_ENV = "POLYSTEP_EXIT_WITH_PARENT"  # the pid a spawned server must keep as its parent


@dataclass
class ServerProcess:
    """A device server child process and the endpoint it announced."""

    process: subprocess.Popen[str]
    endpoint: str
    backend: str
    _stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque([], 50))

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    def stop(self, timeout_s: float = 5.0) -> int:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def stop_group(self, grace_s: float = 15.0) -> None:
        """For a server started with ``new_session``: wait up to ``grace_s`` for it to exit
        (it was told to close), then SIGTERM and SIGKILL its whole process group (the
        server and its workers, e.g. Lava's) until the group is gone."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace_s)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._group_gone(0.0 if sig == signal.SIGTERM else 5.0):
                break
            try:
                os.killpg(self.process.pid, sig)  # the group outlives its leader
            except (ProcessLookupError, PermissionError):
                break
        self._group_gone(5.0)

    def _group_gone(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while True:
            self.process.poll()  # reap our child, or the group never looks empty
            try:
                os.killpg(self.process.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_process(
    backend: str,
    *,
    python: str | None = None,
    bind: str = "tcp://127.0.0.1:0",
    exit_on_close: bool = True,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    startup_timeout_s: float = 120.0,
    new_session: bool = False,
    module: str = "devices.server",
) -> ServerProcess:
    """Spawn ``python -m devices.server`` and wait for its startup line (the real endpoint).

    Raises DeviceUnavailable with the server's own error line if it exits or stays silent;
    a server whose backend refused to start (DeviceUnavailable, e.g. no lava-loihi) gives
    just that reason.  ``new_session`` makes the server a process-group leader, so its own
    workers can be stopped with it (``ServerProcess.stop_group``).  ``module``: another
    module with the same command line and startup line (tests host loihi2 on Lava's CPU
    models that way).
    """
    cmd = [python or sys.executable, "-m", module, "--backend", backend, "--bind", bind]
    cmd += ["--exit-on-close"] if exit_on_close else []
    cmd += list(extra_args)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=new_session,
        )
    except OSError as exc:
        raise DeviceUnavailable(f"cannot run `{' '.join(cmd)}`: {exc}") from None
    tail: collections.deque[str] = collections.deque([], 50)
    lines: queue.Queue[str | None] = queue.Queue()
    _drain(proc.stdout, lines.put, "stdout", eof=True)
    stderr_reader = _drain(proc.stderr, tail.append, "stderr")
    endpoint = _await_startup(proc, lines, stderr_reader, tail, startup_timeout_s, cmd)
    return ServerProcess(proc, endpoint, backend, tail)


def _drain(
    stream: Any, sink: Callable[[Any], None], what: str, *, eof: bool = False
) -> threading.Thread:
    """Read a child pipe to its end in a daemon thread, so the child never blocks on it.

    With ``eof`` the sink gets a final None when the pipe closes (the child exited)."""

    def run() -> None:
        for line in stream:
            line = line.rstrip("\n")
            log.debug("server %s: %s", what, line)
            sink(line)
        if eof:
            sink(None)

    thread = threading.Thread(target=run, name=f"device-server-{what}", daemon=True)
    thread.start()
    return thread


def _await_startup(
    proc: subprocess.Popen[str],
    lines: queue.Queue[str | None],
    stderr_reader: threading.Thread,
    tail: collections.deque[str],
    timeout_s: float,
    cmd: Sequence[str],
) -> str:
    deadline = time.monotonic() + timeout_s
    eof = False
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            eof = True
            break
        match = STARTUP_RE.match(line)
        if match:
            return match.group(2)
    if eof:  # stdout closed: the server is exiting; collect its code and last words
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        why = "closed stdout" if eof else f"did not report ready within {timeout_s:g} s"
    else:
        why = f"exited with code {proc.returncode}"
    stderr_reader.join(2)
    error = _last_error(tail)
    refused = re.match(r"error: DeviceUnavailable: (.*)", error)
    if refused:  # the backend said why it cannot run there
        raise DeviceUnavailable(refused.group(1))
    raise DeviceUnavailable(f"device server `{' '.join(cmd)}` {why}: {error or 'no error output'}")


def _last_error(tail: Sequence[str]) -> str:
    for line in reversed(tail):
        if line.startswith(STARTUP_PREFIX):
            return line[len(STARTUP_PREFIX) :].strip()
    return " | ".join(list(tail)[-3:])
