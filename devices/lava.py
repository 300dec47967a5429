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
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.catalog import BackendRecord, lava_record
from devices.lava_env import find_lava_env, venv_python
from devices.remote import RemoteBackend
from devices.spawn import PARENT_ENV, ServerProcess, start_server_process
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec
from simulators.lava_plan import DeviceNet
from simulators.loihi2_capacity import ChipLimits, check_device_layers, check_one_replica

log = logging.getLogger(__name__)

NEEDS_ENV = (
    "lava backend needs the Lava env: run `polystep-neuro devices setup-lava` (or set "
    "POLYSTEP_LAVA_VENV to a Lava env already set up, e.g. another checkout's .venv-lava)"
)


def spawn_server(
    python: Path, backend: str, *, startup_timeout_s: float = 180.0, module: str = "devices.server"
) -> ServerProcess:
    """Start a device server with the Lava env's python, in its own session, exiting with
    this process; DeviceUnavailable with the server's own error output if it exits or
    stays silent.  (``module``: see ``devices.spawn.start_server_process``.)"""
    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())
    # Run this checkout's code, and nothing from the host's Python (3.11 packages break 3.10).
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.pop("PYTHONHOME", None)
    return start_server_process(
        backend,
        python=str(python),
        env=env,
        startup_timeout_s=startup_timeout_s,
        new_session=True,
        module=module,
    )


def _shutdown(server: ServerProcess, remote: RemoteBackend | None) -> None:
    """Close the remote (the server exits on close) and make sure the group is gone."""
    if remote is not None:
        try:
            remote.close()
        except Exception as exc:  # the server may already be gone
            log.debug("closing the Lava server connection: %s", exc)
    server.stop_group(grace_s=15.0 if remote is not None else 0.0)


class LavaBackend(BaseBackend):
    """``lava`` (floating_pt) / ``lava-fixed`` (fixed_pt) through a spawned Lava server."""

    def __init__(self, mode: str | BackendRecord = "fixed_pt", **options: Any) -> None:
        """``mode`` (floating_pt, fixed_pt, loihi2) or the catalog record that names it; the
        options (``venv``, ``timeout_s``, ``startup_timeout_s``) are the record's
        (``devices.catalog.LAVA_OPTIONS``): ``timeout_s`` bounds one load/evaluate, long by
        default because Lava simulation is slow (minutes for big batches)."""
        super().__init__()
        record = mode if isinstance(mode, BackendRecord) else lava_record(mode)
        resolved = self._adopt(record, options)
        self.record, self.mode = record, str(record.lava_mode)
        venv = resolved["venv"]
        found = Path(venv).expanduser() if venv is not None else find_lava_env()
        if found is None or not venv_python(found).exists():
            raise DeviceUnavailable(NEEDS_ENV)
        self.python = venv_python(found)
        self.timeout_s: float = resolved["timeout_s"]
        self.startup_timeout_s: float = resolved["startup_timeout_s"]
        self._remote: RemoteBackend | None = None
        self._server: ServerProcess | None = None
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
        caps = self._remote.capabilities  # the private server's address is no one's business
        device = f"{caps.device} (Lava server)"
        return replace(caps, name=self.name, is_remote=False, device=device, address="")

    def describe(self) -> str:
        return self.capabilities.device

    def load(self, spec: NetworkSpec) -> None:
        self._check_open()
        net = DeviceNet(spec, self.record.graph_mode)  # SpecError here, before the wire
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

    def run_batch(self, batch: CheckedBatch) -> np.ndarray:
        """The batch checked here goes to the server as it is (no second check on this side)."""
        if self._remote is None:
            raise DeviceError(f"{self.name}: the Lava server is not running")
        return self._remote.run_batch(batch)

    def close(self) -> None:
        if not self._closed:
            self._stop()
        super().close()
