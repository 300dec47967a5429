"""The actor side of the ``ray`` backend: one backend, opened by name, driven by plain data.

Ray runs one ``InnerWorker`` per actor process.  It takes and returns only plain Python
and numpy (the spec as ``NetworkSpec.to_arrays()``, counts as int32 arrays), and reports
a failure as ``{"error": [type name, message]}`` instead of raising: the driver re-raises
the same typed error with the same message (as the device server's wire protocol does),
and a dead actor stays distinguishable from a backend that said no.  Ray-free, so it is
plain, importable code on every node.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.factories import open_device
from polystep_neuro.core.batch import as_numpy
from polystep_neuro.core.errors import DeviceError, PolystepError
from polystep_neuro.core.network import NetworkSpec

Reply = dict[str, Any]  # {"ok": value} or {"error": [type name, message]}


class InnerWorker:
    """Holds one backend from ``open_device(name, **options)`` (``open_backend`` for every
    backend but ray) inside a Ray actor."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = dict(options)
        self._backend: BaseBackend | None = None

    def open(self) -> Reply:
        """Open the backend; its capabilities (JSON) and this process's pid."""
        return _guard(self._open)

    def load(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Reply:
        """Load a spec given as ``to_arrays()``; the effective (e.g. calibrated) spec back."""
        return _guard(lambda: self._load(meta, arrays))

    def evaluate(self, params: Mapping[str, np.ndarray], inputs: np.ndarray) -> Reply:
        """Counts (V, B, N_out) int32 for this actor's share of the parameter sets."""
        return _guard(lambda: self._evaluate(params, inputs))

    def close(self) -> Reply:
        return _guard(self._close)

    # ------------------------------------------------------------------ the work
    def _open(self) -> dict[str, Any]:
        self._backend = open_device(self.name, **self.options)
        return {"capabilities": self._backend.capabilities.to_json(), "pid": os.getpid()}

    def _load(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        backend = self._opened()
        # own, writable copies: Ray hands arguments over as read-only object-store views
        backend.load(NetworkSpec.from_arrays(meta, {k: np.array(v) for k, v in arrays.items()}))
        effective_meta, effective_arrays = backend.spec.to_arrays()
        return {
            "meta": effective_meta,
            "arrays": effective_arrays,
            "capabilities": backend.capabilities.to_json(),
        }

    def _evaluate(self, params: Mapping[str, np.ndarray], inputs: np.ndarray) -> np.ndarray:
        backend = self._opened()
        # own, writable copies of the object-store views; spikes keep their dtype (uint8)
        owned = {name: np.array(value) for name, value in params.items()}
        counts = backend.evaluate(owned, np.array(inputs))  # checked once, in this process
        return np.ascontiguousarray(as_numpy(counts), dtype=np.int32)  # torch-sim: maybe CUDA

    def _close(self) -> bool:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        return True

    def _opened(self) -> BaseBackend:
        if self._backend is None:
            raise DeviceError(f"ray actor for {self.name!r}: backend not opened")
        return self._backend


def _guard(work: Callable[[], Any]) -> Reply:
    """Run ``work``; a raised error becomes data (type name and message), never a pickle."""
    try:
        return {"ok": work()}
    except PolystepError as exc:
        return {"error": [type(exc).__name__, str(exc)]}
    except Exception as exc:  # a backend bug or a bad option (TypeError): still typed
        return {"error": ["DeviceError", f"{type(exc).__name__}: {exc}"]}
