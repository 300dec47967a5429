"""The in-process backend: simulators.torch_lif on CPU or CUDA.

Counts stay on the simulator's device (a torch tensor), so with CUDA the controller's loss
and PolyStep update never copy them to the host.
"""

from __future__ import annotations

import torch

from devices.base import BaseBackend
from devices.catalog import torch_record
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import DeviceError
from polystep_neuro.core.network import NetworkSpec
from simulators.torch_device import resolve_device
from simulators.torch_lif import PRECISIONS, TorchLIF

# Largest state tensor (T * V * B * widest layer elements) evaluated in one piece; bigger
# batches of parameter sets are split along V so memory stays bounded.
DEFAULT_CHUNK_ELEMENTS = 1 << 27


class TorchSimBackend(BaseBackend):
    """Batched PyTorch LIF simulator behind the device contract."""

    def __init__(
        self,
        precision: str = "float32",
        device: str | torch.device | None = "auto",
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise DeviceError(f"torch-sim precision must be one of {PRECISIONS}, got {precision!r}")
        record = torch_record(precision)
        self.precision = precision
        self.name = record.name
        self.writable = record.writable
        self.device = resolve_device(device)
        self.chunk_elements = int(chunk_elements)
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
        spec, num_sets = self.spec, batch.num_sets
        per_set = spec.num_steps * batch.batch_size * max(spec.sizes)
        chunk = max(1, self.chunk_elements // max(per_set, 1))
        if num_sets <= chunk:
            return self._sim.run(batch.params, batch.inputs).counts
        parts = []
        for start in range(0, num_sets, chunk):
            part = batch.sets(start, min(start + chunk, num_sets))
            parts.append(self._sim.run(part.params, part.inputs).counts)
        return torch.cat(parts)

    def close(self) -> None:
        self._sim = None
        super().close()
