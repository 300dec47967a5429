"""Host side of the ``lava`` / ``lava-fixed`` backends: a device server in the Lava venv.

Lava runs only under Python 3.10 (``devices.lava_env`` makes that venv), so the host spawns

    <lava venv>/bin/python -m devices.server --backend lava-fixed --bind tcp://127.0.0.1:0
        --exit-on-close

reads the port from its startup line, and talks to it as a ``RemoteBackend``.  The server
runs in its own session (process group) with this process's pid in its environment: it
takes its Lava worker processes down with it if the host dies, and ``close()`` / interpreter
exit stop the whole group, so no process outlives the host.

A load whose build-time values differ from the loaded network's (another structure, other
non-writable values) restarts the server: Lava 0.10 leaks memory for every graph it builds,
and a fresh process frees it.  Loads that only change writable values reuse the graphs.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.base import BaseBackend, Capabilities
from devices.lava_env import find_lava_env, venv_python
from devices.remote import RemoteBackend
from devices.server import start_server_process
from polystep_neuro.errors import DeviceError, DeviceUnavailable
from polystep_neuro.network import NetworkSpec
from simulators.lava_plan import DeviceNet
from simulators.loihi2_capacity import ChipLimits, check_device_layers, check_one_replica

log = logging.getLogger(__name__)

SERVER_NAMES = {"floating_pt": "lava", "fixed_pt": "lava-fixed", "loihi2": "loihi2"}
PRECISIONS = {"floating_pt": "float32", "fixed_pt": "loihi-fixed", "loihi2": "loihi-fixed"}
PARENT_ENV = "POLYSTEP_EXIT_WITH_PARENT"  # read by devices.lava_local in the server
NEEDS_ENV = "lava backend needs the Lava env: run `polystep-neuro devices setup-lava`"


@dataclass
class LavaServer:
    """A spawned device server: its process (a session leader) and the endpoint it announced.
    (Its error output is read by ``start_server_process``, which reports it on failure.)"""

    process: subprocess.Popen[str]
    endpoint: str

    def stop(self, grace_s: float = 15.0) -> None:
        """Wait up to ``grace_s`` for a server that was told to close, then SIGTERM and
        SIGKILL its whole process group (the server and Lava's workers) until it is gone."""
        proc = self.process
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self._group_gone(0.0 if sig == signal.SIGTERM else 5.0):
                break
            try:
                os.killpg(proc.pid, sig)  # the group outlives its leader: signal the group
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


def spawn_server(python: Path, backend: str, *, startup_timeout_s: float = 180.0) -> LavaServer:
    """Start a device server with the Lava env's python, in its own session; DeviceUnavailable
    with the server's own error output if it exits or stays silent."""
    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())
    # Run this checkout's code, and nothing from the host's Python (3.11 packages break 3.10).
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.pop("PYTHONHOME", None)
    started = start_server_process(
        backend,
        python=str(python),
        env=env,
        startup_timeout_s=startup_timeout_s,
        new_session=True,
    )
    return LavaServer(started.process, started.endpoint)


def _shutdown(server: LavaServer, remote: RemoteBackend | None) -> None:
    """Close the remote (the server exits on close) and make sure the group is gone."""
    if remote is not None:
        try:
            remote.close()
        except Exception as exc:  # the server may already be gone
            log.debug("closing the Lava server connection: %s", exc)
    server.stop(grace_s=15.0 if remote is not None else 0.0)


class LavaBackend(BaseBackend):
    """``lava`` (floating_pt) / ``lava-fixed`` (fixed_pt) through a spawned Lava server."""

    def __init__(
        self,
        mode: str = "fixed_pt",
        *,
        venv: str | Path | None = None,
        timeout_s: float = 3600.0,
        startup_timeout_s: float = 180.0,
    ) -> None:
        """``venv``: the Lava venv (default: the one ``setup-lava`` made); ``timeout_s``
        bounds one load/evaluate (Lava simulation is slow: minutes for big batches)."""
        super().__init__()
        if mode not in SERVER_NAMES:
            raise DeviceError(f"Lava mode must be one of {list(SERVER_NAMES)}, got {mode!r}")
        self.mode = mode
        self.name = SERVER_NAMES[mode]
        self.precision = PRECISIONS[mode]
        found = Path(venv).expanduser() if venv is not None else find_lava_env()
        if found is None or not venv_python(found).exists():
            raise DeviceUnavailable(NEEDS_ENV)
        self.python = venv_python(found)
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._remote: RemoteBackend | None = None
        self._server: LavaServer | None = None
        self._finalizer: weakref.finalize | None = None
        self._signature: tuple[Any, ...] | None = None
        self.restarts = 0
        self._start()

    # ------------------------------------------------------------------ server lifecycle
    def _start(self) -> None:
        server = spawn_server(self.python, self.name, startup_timeout_s=self.startup_timeout_s)
        # stop the server even if close() is never called (garbage collection, exit)
        self._finalizer = weakref.finalize(self, _shutdown, server, None)
        try:
            remote = RemoteBackend(server.endpoint, timeout_s=self.timeout_s, retries=1)
        except BaseException:
            self._finalizer()
            raise
        self._server, self._remote = server, remote
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, server, remote)

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the remote, stops the process group
        self._server = self._remote = self._finalizer = None

    def restart(self) -> None:
        """A fresh server process (frees what Lava leaked); the next load rebuilds."""
        self._stop()
        self._signature = None
        self._spec = None
        self.restarts += 1
        self._start()

    @property
    def server_pid(self) -> int | None:
        return self._server.process.pid if self._server is not None else None

    # ------------------------------------------------------------------ contract
    @property
    def capabilities(self) -> Capabilities:
        if self._remote is None:
            return super().capabilities
        caps = self._remote.capabilities
        device = caps.device.split(" at tcp://")[0]
        return replace(caps, name=self.name, is_remote=False, device=f"{device} (Lava server)")

    def describe(self) -> str:
        return self.capabilities.device

    def load(self, spec: NetworkSpec) -> None:
        if self._closed:
            raise DeviceError(f"{self.name}: backend is closed")
        lava_mode = "fixed_pt" if self.mode == "loihi2" else self.mode
        net = DeviceNet(spec, lava_mode)  # SpecError here, before the wire
        if self.mode == "loihi2":  # and the chip's limits (the server checks them again)
            check_device_layers(net.layers)
            check_one_replica(net.spec, ChipLimits.from_env())
        signature = net.signature()
        if self._signature is not None and signature != self._signature:
            log.info("new network structure: restarting the Lava server")
            self.restart()
        assert self._remote is not None
        self._remote.load(spec)
        self._spec = self._remote.spec
        self._signature = signature

    def evaluate(self, params: Mapping[str, Any], inputs: Any) -> np.ndarray:
        if self._closed:
            raise DeviceError(f"{self.name}: backend is closed")
        if self._remote is None:
            raise DeviceError(f"{self.name}: the Lava server is not running")
        return self._remote.evaluate(params, inputs)

    def close(self) -> None:
        if not self._closed:
            self._stop()
        super().close()
