"""LavaLocalBackend: the device contract on real Lava processes (runs in the Lava env).

Hosted by ``python -m devices.server --backend lava|lava-fixed|loihi2`` inside the Lava venv
(Python 3.10, lava-nc 0.10); the host reaches it through ``devices.lava.LavaBackend``.
Never imports torch.

Modes:
- ``floating_pt`` ("lava"): Lava's float models.  They compute in float64; the contract's
  precision class is still "float32" (the float model family, not bit-exact with torch).
- ``fixed_pt`` ("lava-fixed"): Lava's bit-accurate Loihi 2 models; precision "loihi-fixed",
  bit-identical with torch-sim-fixed.
- ``loihi2``: the same graph with ``Loihi2HwCfg`` on a Loihi 2 system (needs lava-loihi).
  Loads check the network against the chip's limits (``simulators.loihi2_capacity``) and
  V is split across runs so that each run's replicas fit on the chip(s).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.catalog import BackendRecord, lava_record
from devices.spawn import PARENT_ENV
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec
from simulators.lava_net import LavaNet, RunCfgFactory, sim_run_cfg
from simulators.lava_plan import DEFAULT_MAX_VERTICES
from simulators.loihi2_capacity import ChipLimits

log = logging.getLogger(__name__)

LOIHI2_HELP = (
    "Loihi 2 needs lava-loihi, which Intel provides to INRC members on its cloud systems "
    "(not on PyPI). On such a host, in a Python 3.10 env with lava-nc, lava-loihi and this "
    "project, start `python -m devices.server --backend loihi2 --bind tcp://127.0.0.1:5555`, "
    "forward the port (ssh -L 5555:127.0.0.1:5555 HOST) and use the backend "
    "tcp://127.0.0.1:5555 here."
)


def loihi2_available() -> bool:
    try:
        from lava.utils.system import Loihi2
    except ImportError:
        return False
    return bool(Loihi2.is_loihi2_available)


def hw_run_cfg(select_tag: str, exceptions: dict) -> Any:
    """Loihi2HwCfg prefers the chip's Nc models; no tag (a "fixed_pt" tag could pick the
    CPU models).  The bridge keeps its CPU model through the exception map.  Untested on
    hardware here (no lava-loihi): the bridge's RefPorts into Nc processes may need
    lava-loihi's own I/O adapters."""
    from lava.magma.core.run_configs import Loihi2HwCfg

    return Loihi2HwCfg(exception_proc_model_map=exceptions)


class LavaLocalBackend(BaseBackend):
    """Lava processes in this Python (the Lava env); see module docstring for the modes."""

    def __init__(
        self,
        mode: str | BackendRecord = "fixed_pt",
        *,
        run_cfg: RunCfgFactory | None = None,
        max_sets: int | None = None,
        parallel: int | None = None,
        chip: ChipLimits | None = None,
    ) -> None:
        """``mode`` (floating_pt, fixed_pt, loihi2) or the catalog record that names it.
        ``run_cfg`` replaces the run configuration (tests run mode "loihi2" on
        Loihi2SimCfg); ``max_sets`` caps the parameter sets (replicas) of one graph (larger
        V runs in several passes; env POLYSTEP_LAVA_MAX_VERTICES); ``parallel`` pins the samples run
        side by side (default: chosen by the cost model); ``chip``: the Loihi 2 limits the
        loihi2 mode checks against (default ``ChipLimits.from_env()``; the CPU modes have
        none)."""
        super().__init__()
        self.record = mode if isinstance(mode, BackendRecord) else lava_record(mode)
        self.mode = str(self.record.lava_mode)
        self._adopt(self.record, {})
        if self.mode == "loihi2" and run_cfg is None:
            if not loihi2_available():
                raise DeviceUnavailable(LOIHI2_HELP)
            run_cfg = hw_run_cfg
        self._run_cfg = run_cfg or sim_run_cfg
        env_cap = os.environ.get("POLYSTEP_LAVA_MAX_VERTICES")
        self.graph_sets = int(max_sets or env_cap or DEFAULT_MAX_VERTICES)
        self.parallel = parallel
        self.chip = (chip or ChipLimits.from_env()) if self.mode == "loihi2" else None
        self._net: LavaNet | None = None
        _watch_parent()

    @property
    def lava_mode(self) -> str:
        """The graph it builds (Loihi 2 runs the fixed_pt graph)."""
        return self.record.graph_mode

    def describe(self) -> str:
        what = {
            "floating_pt": "Lava 0.10 floating_pt models (float64) on CPU",
            "fixed_pt": "Lava 0.10 fixed_pt models (Loihi 2 bit-accurate) on CPU",
            "loihi2": "Loihi 2 via lava-loihi (Loihi2HwCfg)",
        }[self.mode]
        if self.chip is not None:
            what += f" on {self.chip.describe()}"
        return f"{what}, up to {self.graph_sets} replicas per graph"

    def load(self, spec: NetworkSpec) -> None:
        self._check_open()
        t0 = time.perf_counter()
        if self._net is None:
            self._net = LavaNet(
                spec,
                self.lava_mode,
                max_vertices=self.graph_sets,
                parallel=self.parallel,
                run_cfg=self._run_cfg,
                dense_dot=self.mode != "loihi2",
                chip=self.chip,
            )
        else:
            kept = self._net.load(spec)
            log.info("load: compiled graphs %s", "kept" if kept else "dropped (new structure)")
        self._spec = self._net.spec
        # Lava builds and compiles a graph at the first evaluate of each batch shape, so a
        # load is only checks; said so, or "0.00 s" reads as if the device were ready
        log.info("load took %.2f s (Lava compiles its graph at the first evaluate)",
                 time.perf_counter() - t0)  # fmt: skip

    def run_batch(self, batch: CheckedBatch) -> np.ndarray:
        """The checked batch straight to the Lava graph: no second check, and spikes in the
        dtype they arrived in (uint8 from the wire) until the graph's own int8 buffer."""
        assert self._net is not None
        return self._net.run(batch)

    @property
    def builds(self) -> int:
        """Graphs compiled so far (each leaks ~15 MB in Lava 0.10)."""
        return 0 if self._net is None else self._net.builds

    def close(self) -> None:
        if self._net is not None:
            self._net.close()
            self._net = None
        super().close()


_watching = False


def _watch_parent() -> None:
    """In a server spawned by devices.lava: if the host dies, take the whole process group
    (this server and Lava's worker processes) down, so nothing is left behind."""
    global _watching
    expected = os.environ.get(PARENT_ENV)
    if _watching or not expected or not expected.isdigit():
        return
    _watching = True
    parent = int(expected)

    def watch(poll: Callable[[], int] = os.getppid) -> None:
        while True:
            if poll() != parent:
                log.warning("host process %d is gone; stopping", parent)
                if os.getpgrp() == os.getpid():  # our own group: us and Lava's workers
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
