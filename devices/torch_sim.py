"""The in-process backend: simulators.torch_lif on CPU or CUDA.

Counts stay on the simulator's device (a torch tensor), so with CUDA the controller's loss
and PolyStep update never copy them to the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from devices.base import BaseBackend
from devices.catalog import BackendRecord, torch_record
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators.torch_device import resolve_device
from simulators.torch_lif import TorchLIF


class TorchSimBackend(BaseBackend):
    """Batched PyTorch LIF simulator behind the device contract."""

    def __init__(
        self, precision: str | BackendRecord = "float32", *positional: Any, **options: Any
    ) -> None:
        """``precision`` (float32, loihi-fixed) or the catalog record that names it; the
        options (``device``, ``chunk_elements``, in that order when given by position) are
        the record's: ``devices.catalog.TORCH_OPTIONS`` holds their defaults and checks
        (``chunk_elements`` bounds the state tensor computed in one piece, so a large V is
        split and memory stays bounded)."""
        super().__init__()
        record = precision if isinstance(precision, BackendRecord) else torch_record(precision)
        resolved = self._adopt(record, options, positional)
        self.device = resolve_device(resolved["device"])
        self.chunk_elements: int = resolved["chunk_elements"]
        self._sim: TorchLIF | None = None

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"PyTorch LIF simulator on {torch.cuda.get_device_name(self.device)}"
        return "PyTorch LIF simulator on CPU"

    def load(self, spec: NetworkSpec) -> None:
        self._check_open()
        self._sim = TorchLIF(spec, self.precision, self.device)
        self._spec = self._sim.spec  # calibrated for fixed point where needed

    def run_batch(self, batch: CheckedBatch) -> torch.Tensor:
        """Counts on the simulator's device; V split so one piece stays under
        ``chunk_elements``.  Binary inputs reach the simulator in the dtype given (uint8,
        bool or float), which converts them once on its device."""
        assert self._sim is not None
        num_sets, chunk = batch.num_sets, self._sets_per_piece(batch.batch_size)
        if num_sets <= chunk:
            return self._sim.run(batch).counts
        parts = []
        for start in range(0, num_sets, chunk):
            part = batch.sets(start, min(start + chunk, num_sets))
            parts.append(self._sim.run(part).counts)
        return torch.cat(parts)

    def _sets_per_piece(self, batch_size: int) -> int:
        """How many parameter sets one simulator call takes: the state of a piece (T x B x
        widest layer per set) stays under ``chunk_elements``."""
        spec = self.spec
        per_set = spec.num_steps * batch_size * max(spec.sizes)
        return max(1, self.chunk_elements // max(per_set, 1))

    @property
    def low_rank_probes(self) -> bool:
        """Whether ``evaluate_low_rank`` takes a first layer moved from any base: float32
        only (in loihi-fixed a moved float matrix rounds to device weights that are not
        the base's plus a low-rank term)."""
        return self.precision == "float32"

    def evaluate_low_rank(
        self, params: Mapping[str, Any], base: Any, u: Any, vt: Any, inputs: Any
    ) -> torch.Tensor:
        """Counts of V sets whose ``fc0.weight`` is ``base`` plus ``u[v] @ vt[v]`` and whose
        other writable parameters are ``params`` (TorchLIF.evaluate_low_rank), V split as
        ``run_batch`` splits it."""
        self._check_open()
        assert self._sim is not None
        if not self.low_rank_probes:
            raise SpecError(f"{self.name}: low-rank probes need the float32 simulator")
        u = torch.as_tensor(u, device=self.device)
        vt = torch.as_tensor(vt, device=self.device)
        num_sets, chunk = u.shape[0], self._sets_per_piece(len(inputs))
        parts = []
        for start in range(0, num_sets, chunk):
            stop = min(start + chunk, num_sets)
            part = {name: value[start:stop] for name, value in params.items()}
            result = self._sim.evaluate_low_rank(
                part, u[start:stop], vt[start:stop], inputs, base=base
            )
            parts.append(result.counts)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def close(self) -> None:
        self._sim = None
        super().close()
