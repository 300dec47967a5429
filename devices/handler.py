"""DeviceServer: one request's frames in, one reply's frames out, for one hosted backend.

Every request gets a reply: malformed messages and backend failures become typed error
replies (the client re-raises them by type), and the server keeps serving.  An evaluate is
checked once, by the hosted backend's own ``evaluate``, against the network it holds; its
inputs reach that backend in the dtype they crossed the wire in (binary spikes as uint8).
numpy-only (no torch): the Lava env runs it.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from devices.base import BaseBackend
from devices.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
    error_reply,
)
from polystep_neuro.core.batch import as_numpy
from polystep_neuro.core.errors import DeviceError, PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec

__all__ = ["INPUT_DTYPES", "DeviceServer"]

log = logging.getLogger(__name__)

INPUT_DTYPES = ("bool", "uint8", "float32")


class DeviceServer:
    """Turns request frames into reply frames; never raises for a bad or failing request."""

    def __init__(
        self,
        backend_name: str,
        factory: Callable[[], BaseBackend],
        *,
        limits: Limits = DEFAULT_LIMITS,
        exit_on_close: bool = False,
    ) -> None:
        """``factory`` makes the hosted backend: now (to fail fast at startup) and again
        after a client closed the previous one."""
        self.backend_name = backend_name
        self.limits = limits
        self.exit_on_close = exit_on_close
        self._factory = factory
        self._backend: BaseBackend | None = self._factory()
        self.loaded = False
        self.should_exit = False
        self.busy = False

    @property
    def backend(self) -> BaseBackend:
        """The hosted backend; a fresh one after a client closed the previous."""
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def handle(self, frames: Sequence[Any]) -> list[Any]:
        """One request in, one reply out (an error reply when anything fails)."""
        request_id: Any = None
        op: Any = None
        try:
            header, arrays = decode(frames, self.limits)
            request_id, op = header["id"], header["op"]
            fields, out = self._dispatch(op, header, arrays)
            return encode({"id": request_id, "op": op, **fields}, out, self.limits)
        except ProtocolError as exc:
            request_id = getattr(exc, "request_id", request_id)
            log.warning("bad request (id=%r, op=%r): %s", request_id, op, exc)
            return error_reply(exc, request_id, op, self.limits)
        except PolystepError as exc:
            log.info("%s failed: %s: %s", op, type(exc).__name__, exc)
            return error_reply(exc, request_id, op, self.limits)
        except Exception as exc:  # the server must outlive any backend bug
            log.exception("unexpected failure in %s", op)
            return error_reply(exc, request_id, op, self.limits)

    def _dispatch(
        self, op: str, header: Mapping[str, Any], arrays: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        handlers = {
            "hello": self._hello,
            "load": self._load,
            "evaluate": self._evaluate,
            "ping": self._ping,
            "close": self._close,
        }
        return handlers[op](header, arrays)

    def _hello(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("hello", arrays)
        info = {
            "backend": self.backend_name,
            "protocol": PROTOCOL_VERSION,
            "loaded": self.loaded,
            "pid": os.getpid(),
            "python": platform.python_version(),
        }
        fields = {
            "capabilities": self.backend.capabilities.to_json(),
            "server": info,
            "limits": self.limits.to_json(),
        }
        return fields, {}

    def _load(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        meta = header.get("spec")
        if not isinstance(meta, dict):
            raise ProtocolError(
                "load needs a 'spec' object (the metadata of NetworkSpec.to_arrays()) "
                "and the spec arrays"
            )
        spec = _spec_from_wire(meta, arrays)
        self.loaded = False
        self.backend.load(spec)
        self.loaded = True
        effective_meta, effective_arrays = self.backend.spec.to_arrays()
        fields = {"capabilities": self.backend.capabilities.to_json(), "spec": effective_meta}
        return fields, effective_arrays

    def _evaluate(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        if not self.loaded:
            raise NotLoadedError(
                f"{self.backend_name} server holds no network (never loaded, closed, or "
                "restarted); send load first"
            )
        params = dict(arrays)
        inputs = params.pop("inputs", None)
        if inputs is None:
            raise ProtocolError("evaluate needs an 'inputs' array of shape (B, T, N_in)")
        if inputs.dtype.name not in INPUT_DTYPES:
            raise ProtocolError(
                f"evaluate 'inputs' must be one of {', '.join(INPUT_DTYPES)}, "
                f"got {inputs.dtype.name}"
            )
        counts = self.backend.evaluate(params, inputs)
        return {}, {"counts": _counts_array(counts)}

    def _ping(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("ping", arrays)
        return {"pong": True, "loaded": self.loaded}, {}

    def _close(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        _no_arrays("close", arrays)
        self.close_backend()
        self.should_exit = self.exit_on_close
        return {"closed": True, "exiting": self.should_exit}, {}

    def close_backend(self) -> None:
        backend, self._backend, self.loaded = self._backend, None, False
        if backend is not None:
            backend.close()


def _no_arrays(op: str, arrays: Mapping[str, np.ndarray]) -> None:
    if arrays:
        raise ProtocolError(f"{op} takes no arrays, got {', '.join(arrays)}")


def _spec_from_wire(meta: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> NetworkSpec:
    # own copies: the frames' memory is reused once the reply is sent
    owned = {name: np.array(value) for name, value in arrays.items()}
    try:
        return NetworkSpec.from_arrays(meta, owned)
    except SpecError:
        raise
    except Exception as exc:  # a malformed meta object can fail in many ways
        raise SpecError(f"malformed network spec: {type(exc).__name__}: {exc}") from None


def _counts_array(counts: Any) -> np.ndarray:
    """Backend result (numpy or torch, any integer-valued dtype) -> int32 (V, B, N_out)."""
    arr = as_numpy(counts)
    if arr.ndim != 3:
        raise DeviceError(f"backend returned counts of shape {arr.shape}, expected (V, B, N_out)")
    return np.ascontiguousarray(arr, dtype=np.int32)
