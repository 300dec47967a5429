"""Wire format between the host and a device server: JSON header + raw array frames.

A message is a ZeroMQ multipart message.  Frame 0 is a UTF-8 JSON object::

    {"v": 2, "op": "evaluate", "id": 7, "session": "9f3c...",
     "arrays": [{"name": "fc1.weight", "dtype": "<f4", "shape": [32, 10, 64]}, ...],
     ...op-specific fields...}

and frames 1..n are the raw C-contiguous little-endian buffers of those arrays, in order.
Buffers are sent without copying and received as views on the ZeroMQ frame (no pickle, ever:
only an allow-list of plain numeric dtypes can cross the wire).  Every size is checked
against ``Limits`` *before* anything is allocated, so a hostile or buggy peer cannot make
the server allocate a declared 10^12-element array.

Replies use the same framing and echo ``id`` and ``op``; a failed request is answered with
``{"error": {"type": <error class name>, "message": ...}}`` so the client can re-raise the
same typed error (``error_from_wire``).

Sessions (v2): ``hello`` opens a session and its reply names it; every later request
carries ``"session"``, and a server holds one network per session (``devices.sessions``),
so clients sharing a server never see each other's network.  A ``hello`` may carry the
client's own ``"token"`` (hex): a ``hello`` the client retried after a timeout then gets the
session its first try opened rather than a second one.

This module must import under Python 3.10 with numpy 1.26 and without torch: the Lava env
runs it.  Keep it numpy + json + stdlib only (it does not even import zmq: frames are any
buffer — ``bytes``, ``memoryview`` or ``zmq.Frame``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from polystep_neuro.core.errors import (
    ERROR_TYPES,
    DeviceError,
    DeviceUnavailable,
    PolystepError,
    error_from_name,
)

__all__ = [
    "ALLOWED_DTYPES",
    "Busy",
    "DEFAULT_LIMITS",
    "OPS",
    "PROTOCOL_VERSION",
    "Limits",
    "NotLoadedError",
    "ProtocolError",
    "SessionError",
    "SessionExpired",
    "decode",
    "encode",
    "error_from_wire",
    "error_reply",
    "message_nbytes",
]

# Bump when a peer of the other version would misread a message; both sides then refuse
# each other with "unsupported protocol version" (see _check_header).  Fields added to a
# JSON object that old peers ignore do not need a bump: capabilities gained ``max_sets``
# (read as ``max_vertices`` from an older server) and ``address`` within v1.  v2 added
# sessions: a v1 client would share one network with every other client, so a v2 server
# answers it (in v1 framing, which it can read) with an error naming the remedy.
PROTOCOL_VERSION = 2
OPS = ("hello", "load", "evaluate", "ping", "close")

# Wire dtype string -> numpy dtype.  Canonical form is numpy's ``dtype.str`` (explicit
# little-endian byte order); the plain names are accepted as aliases of the same types.
_CANONICAL = ("|b1", "|u1", "|i1", "<i2", "<i4", "<i8", "<f4", "<f8")
ALLOWED_DTYPES: dict[str, np.dtype] = {s: np.dtype(s) for s in _CANONICAL}
ALLOWED_DTYPES.update({np.dtype(s).name: np.dtype(s) for s in _CANONICAL})

_MAX_NAME_CHARS = 200
_MAX_ID_CHARS = 128


class ProtocolError(DeviceError):
    """A message does not follow the wire protocol (framing, header, dtype, size)."""


class NotLoadedError(DeviceError):
    """The session holds no network (never loaded, or closed): send ``load``."""


class SessionError(DeviceError):
    """The server holds no such session (it restarted, or the session was closed): open a
    new one with ``hello`` and load again."""


class SessionExpired(SessionError):
    """The session went unused for longer than the server keeps idle sessions."""


class Busy(DeviceUnavailable):
    """Every session slot of the server holds another client's network."""


_WIRE_ERRORS: dict[str, type[PolystepError]] = {
    cls.__name__: cls for cls in (ProtocolError, NotLoadedError, SessionError, SessionExpired, Busy)
}


@dataclass(frozen=True)
class Limits:
    """What one message may declare; checked before any buffer is touched.

    Defaults fit a V x (784 x 512) float32 batch with V in the hundreds, and refuse absurd
    declarations outright.  ``max_array_bytes`` also caps each ZeroMQ frame on the server
    (ZMQ_MAXMSGSIZE), so an oversized frame is dropped by libzmq before it is buffered.
    """

    max_header_bytes: int = 1 << 20
    max_arrays: int = 256
    max_ndim: int = 8
    max_array_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Limits:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"limits must be an object, got {type(data).__name__}")
        values = {}
        for key in cls.__dataclass_fields__:
            value = data.get(key, getattr(DEFAULT_LIMITS, key))
            if not _is_int(value) or value < 1:
                raise ProtocolError(f"limit {key!r} must be a positive integer, got {value!r}")
            values[key] = value
        return cls(**values)


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- encoding
def encode(
    header: Mapping[str, Any],
    arrays: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    version: int = PROTOCOL_VERSION,
) -> list[Any]:
    """Frames for one message: JSON header, then one zero-copy buffer per array.

    ``header`` holds ``op``/``id`` and any op fields; ``v`` and ``arrays`` are filled in.
    Send the result with ``socket.send_multipart(frames, copy=False)``.  Raises
    ProtocolError for a dtype that may not cross the wire or a message over ``limits``.
    (``version``: only to answer an older peer in framing it reads.)
    """
    limits = limits or DEFAULT_LIMITS
    if "arrays" in header or "v" in header:
        raise ProtocolError("encode() fills in 'v' and 'arrays'; do not pass them in the header")
    descriptors: list[dict[str, Any]] = []
    buffers: list[np.ndarray] = []
    for name, value in (arrays or {}).items():
        arr = _wire_array(name, value)
        descriptors.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
        # a flat uint8 view: one plain contiguous buffer, also for 0-d and bool arrays
        buffers.append(arr.reshape(-1).view(np.uint8))
    full = {"v": version, **header, "arrays": descriptors}
    try:
        head = json.dumps(full, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"header is not plain JSON: {exc}") from None
    _check_sizes(descriptors, limits)
    if len(head) > limits.max_header_bytes:
        raise ProtocolError(
            f"header is {len(head)} bytes, over the limit of {limits.max_header_bytes}"
        )
    return [head, *buffers]


def _wire_array(name: str, value: Any) -> np.ndarray:
    """C-contiguous little-endian array of an allowed dtype (copies only when it must)."""
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise ProtocolError(f"array name must be a non-empty string, got {name!r}")
    arr = np.asarray(value)
    dtype = arr.dtype
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
    if dtype.str not in _CANONICAL:
        raise ProtocolError(
            f"array {name!r} has dtype {arr.dtype}, which cannot be sent; "
            f"allowed: {', '.join(_allowed_names())}"
        )
    return np.asarray(arr, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d 1-d)


def message_nbytes(arrays: Mapping[str, Any]) -> int:
    """Bytes the array frames of a message would take (for splitting a batch to fit)."""
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())


# --------------------------------------------------------------------------- decoding
def decode(
    frames: Sequence[Any],
    limits: Limits | None = None,
    *,
    reply: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse and validate one message; returns (header, {name: array view}).

    Arrays are read-only or writable views on the frames (no copy).  Every failure is a
    ProtocolError naming the problem; ``exc.request_id`` carries the id when the header
    could be read, so an error reply can still echo it.  ``reply=True`` skips the op
    check (replies may answer an unreadable request) and validates ``error`` instead.
    """
    limits = limits or DEFAULT_LIMITS
    if len(frames) == 0:
        raise ProtocolError("empty message: expected a JSON header frame")
    header = _parse_header(frames[0], limits)
    try:
        _check_header(header, reply)
        descriptors = _check_descriptors(header.get("arrays", []), len(frames) - 1, limits)
        arrays = _views(descriptors, frames[1:])
    except ProtocolError as exc:
        exc.request_id = _safe_id(header)  # type: ignore[attr-defined]
        exc.version = header.get("v")  # type: ignore[attr-defined]
        raise
    return header, arrays


def _parse_header(frame: Any, limits: Limits) -> dict[str, Any]:
    raw = _as_bytes_view(frame, "header")
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError(
            f"header frame is {raw.nbytes} bytes, over the limit of {limits.max_header_bytes}"
        )
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"header is not UTF-8: {exc}") from None
    try:
        header = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")


def _check_header(header: dict[str, Any], reply: bool) -> None:
    version = header.get("v")
    if not _is_int(version):
        raise ProtocolError("header is missing the protocol version field 'v'")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} (this side speaks v{PROTOCOL_VERSION}); "
            "install the same polystep-neuro version on both sides"
        )
    if "id" not in header and not reply:
        raise ProtocolError("header is missing the request 'id' field")
    req_id = header.get("id")
    if not (req_id is None or _is_int(req_id) or isinstance(req_id, str)) or (
        isinstance(req_id, str) and len(req_id) > _MAX_ID_CHARS
    ):
        raise ProtocolError(f"'id' must be an integer or a short string, got {req_id!r}")
    if reply:
        _check_error_field(header.get("error"))
        return
    op = header.get("op")
    if op is None:
        raise ProtocolError(f"header is missing the 'op' field (one of {', '.join(OPS)})")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")


def _check_error_field(error: Any) -> None:
    if error is None:
        return
    if not (
        isinstance(error, dict)
        and isinstance(error.get("type"), str)
        and isinstance(error.get("message"), str)
    ):
        raise ProtocolError("reply 'error' must be an object with string 'type' and 'message'")


def _check_descriptors(
    descriptors: Any, num_frames: int, limits: Limits
) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """(name, dtype, shape, nbytes) per array, all validated before any allocation."""
    if not isinstance(descriptors, list):
        raise ProtocolError(f"'arrays' must be a list, got {type(descriptors).__name__}")
    if len(descriptors) > limits.max_arrays:
        raise ProtocolError(
            f"message declares {len(descriptors)} arrays, over the limit of {limits.max_arrays}"
        )
    if len(descriptors) != num_frames:
        raise ProtocolError(
            f"header declares {len(descriptors)} array(s) but the message has {num_frames} "
            "data frame(s)"
        )
    out = []
    seen: set[str] = set()
    total = 0
    for index, desc in enumerate(descriptors):
        name, dtype, shape = _check_descriptor(index, desc, limits)
        if name in seen:
            raise ProtocolError(f"array name {name!r} appears twice")
        seen.add(name)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > limits.max_array_bytes:
            raise ProtocolError(
                f"array {name!r} declares shape {list(shape)} of {dtype.name} = {nbytes} bytes, "
                f"over the per-array limit of {limits.max_array_bytes}"
            )
        if nbytes == 0 and max(shape, default=0) > limits.max_array_bytes:
            # empty, yet numpy would still refuse (or choke on) such a shape
            raise ProtocolError(
                f"array {name!r} has an impossible dimension in shape {list(shape)}"
            )
        total += nbytes
        if total > limits.max_total_bytes:
            raise ProtocolError(
                f"message arrays add up to more than the limit of {limits.max_total_bytes} bytes"
            )
        out.append((name, dtype, shape, nbytes))
    return out


def _check_descriptor(
    index: int, desc: Any, limits: Limits
) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(desc, dict):
        raise ProtocolError(f"arrays[{index}] must be an object with name, dtype and shape")
    for key in ("name", "dtype", "shape"):
        if key not in desc:
            raise ProtocolError(f"arrays[{index}] is missing the {key!r} field")
    name = desc["name"]
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise ProtocolError(f"arrays[{index}] name must be a non-empty short string")
    dtype_name = desc["dtype"]
    if not isinstance(dtype_name, str) or dtype_name not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"array {name!r} has dtype {dtype_name!r}, which is not allowed; allowed: "
            f"{', '.join(_allowed_names())} (little-endian)"
        )
    shape = desc["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise ProtocolError(f"array {name!r} shape must be a list of integers, got {shape!r}")
    if len(shape) > limits.max_ndim:
        raise ProtocolError(
            f"array {name!r} has {len(shape)} dimensions, over the limit of {limits.max_ndim}"
        )
    if any(d < 0 for d in shape):
        raise ProtocolError(f"array {name!r} has a negative dimension in shape {shape}")
    return name, ALLOWED_DTYPES[dtype_name], tuple(shape)


def _views(
    descriptors: list[tuple[str, np.dtype, tuple[int, ...], int]], frames: Sequence[Any]
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for (name, dtype, shape, nbytes), frame in zip(descriptors, frames, strict=True):
        buf = _as_bytes_view(frame, f"array {name!r}")
        if buf.nbytes != nbytes:
            raise ProtocolError(
                f"array {name!r} declares {list(shape)} of {dtype.name} = {nbytes} bytes, "
                f"but its frame holds {buf.nbytes} bytes"
            )
        if nbytes == 0:
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arrays


def _as_bytes_view(frame: Any, what: str) -> memoryview:
    """A flat byte view of any buffer (bytes, memoryview, zmq.Frame) without copying."""
    try:
        view = memoryview(frame)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{what} frame is not a contiguous byte buffer: {exc}") from None


# --------------------------------------------------------------------------- errors
def error_reply(
    exc: BaseException,
    request_id: Any = None,
    op: Any = None,
    limits: Limits | None = None,
    version: int = PROTOCOL_VERSION,
) -> list[Any]:
    """Frames answering a request with a typed error the client re-raises by name."""
    header: dict[str, Any] = {"id": _plain_id(request_id), "op": op if op in OPS else None}
    header["error"] = {"type": wire_error_type(exc), "message": wire_error_message(exc)}
    return encode(header, None, limits, version)


def wire_error_type(exc: BaseException) -> str:
    """The nearest error class the other side knows (walks the MRO; else DeviceError)."""
    for cls in type(exc).__mro__:
        if _WIRE_ERRORS.get(cls.__name__, ERROR_TYPES.get(cls.__name__)) is cls:
            return cls.__name__
    return DeviceError.__name__


def wire_error_message(exc: BaseException) -> str:
    if isinstance(exc, PolystepError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"  # an unexpected failure: keep what it was


def error_from_wire(type_name: str, message: str) -> PolystepError:
    """Rebuild a typed error received over the wire (unknown names become DeviceError)."""
    if type_name in _WIRE_ERRORS:
        return _WIRE_ERRORS[type_name](message)
    return error_from_name(type_name, message)


# --------------------------------------------------------------------------- helpers
def _check_sizes(descriptors: list[dict[str, Any]], limits: Limits) -> None:
    """The same size rules decode() applies, so a sender fails before sending."""
    _check_descriptors(descriptors, len(descriptors), limits)


def _allowed_names() -> list[str]:
    return [np.dtype(s).name for s in _CANONICAL]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_id(value: Any) -> Any:
    if value is None or _is_int(value):
        return value
    if isinstance(value, str) and len(value) <= _MAX_ID_CHARS:
        return value
    return None


def _safe_id(header: Mapping[str, Any]) -> Any:
    return _plain_id(header.get("id"))
