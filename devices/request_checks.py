"""What a request may hold: every field a device server uses, typed and bounded before use.

A load's spec object must have exactly the fields ``NetworkSpec.to_arrays()`` writes, each
of its type and in its range (an exponent is an integer in Loihi 2's range, a scale a
finite positive number, a delay 0 or 1 ...), and exactly the arrays those fields declare,
all float32.  An evaluate's parameter sets are float32 and its inputs bool, uint8 or
float32: nothing is cast on the server.  Failures are SpecError (the spec is wrong) or
ProtocolError (the message is), one line each.  numpy only: the Lava env runs it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from devices.protocol import ProtocolError
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import FORMAT_VERSION, NEURON_KINDS, RESET_MODES, NetworkSpec
from simulators.fixed_point import WEIGHT_EXP_MAX, WEIGHT_EXP_MIN

__all__ = [
    "INPUT_DTYPES",
    "client_name",
    "client_token",
    "evaluate_arrays",
    "session_id",
    "spec_from_wire",
]

INPUT_DTYPES = ("bool", "uint8", "float32")
MAX_LAYERS = 64
MAX_STEPS = 1_000_000  # an evaluate's inputs (B, T, N_in) bound T further
MAX_FIXED_SCALE = 1e30  # products with float32 weights stay finite in float64
MAX_CLIENT_CHARS = 200
_SESSION_ID = re.compile(r"[0-9a-f]{1,64}")
_SPEC_FIELDS = ("format", "num_steps", "writable", "layers")
_LAYER_FIELDS = (
    "has_bias",
    "reset",
    "reset_delay",
    "delay",
    "neuron",
    "fixed_scale",
    "fixed_weight_exp",
)


# --------------------------------------------------------------------------- header fields
def session_id(header: Mapping[str, Any], op: str, *, required: bool = True) -> str | None:
    """The request's session id (hex, as ``hello`` gave it); ProtocolError if malformed or,
    where ``required``, missing."""
    value = header.get("session")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        if value is None:
            raise ProtocolError(
                f"{op} needs the 'session' that hello returned (protocol v2: each client's "
                "network lives in its own session)"
            )
        raise ProtocolError(f"'session' must be the hex id hello returned, got {value!r:.80}")
    return value


def client_token(header: Mapping[str, Any]) -> str | None:
    """The token a client sends with every ``hello`` (hex, its own), so that a retried
    ``hello`` gets the session its first try opened; None when it sends none."""
    value = header.get("token")
    if value is None:
        return None
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise ProtocolError(f"'token' must be a hex string of 1-64 digits, got {value!r:.80}")
    return value


def client_name(header: Mapping[str, Any]) -> str:
    """Who the client says it is (shown to other clients when the server is busy)."""
    value = header.get("client", "")
    if not isinstance(value, str) or len(value) > MAX_CLIENT_CHARS or not value.isprintable():
        raise ProtocolError(
            f"'client' must be a printable string of at most {MAX_CLIENT_CHARS} characters"
        )
    return value or "an unnamed client"


# --------------------------------------------------------------------------- load
def spec_from_wire(meta: Any, arrays: Mapping[str, np.ndarray]) -> NetworkSpec:
    """The network a load describes, every field and array checked first."""
    if not isinstance(meta, dict):
        raise ProtocolError(
            "load needs a 'spec' object (the metadata of NetworkSpec.to_arrays()) "
            "and the spec arrays"
        )
    layers = _check_spec_fields(meta)
    expected = _array_shapes(layers)
    missing = [name for name in expected if name not in arrays]
    extra = [name for name in arrays if name not in expected]
    if missing or extra:
        raise SpecError(
            "the load's arrays do not match its spec object: "
            + "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"not declared {', '.join(extra)}" if extra else "",
                )
                if part
            )
        )
    for name, ndim in expected.items():
        value = arrays[name]
        if value.dtype != np.float32:
            raise ProtocolError(f"spec array {name!r} must be float32, got {value.dtype.name}")
        if value.ndim != ndim:
            raise SpecError(f"spec array {name!r} must have {ndim} dimension(s), got {value.shape}")
    # own copies: the frames' memory is reused once the reply is sent
    return NetworkSpec.from_arrays(meta, {name: np.array(a) for name, a in arrays.items()})


def _check_spec_fields(meta: dict[str, Any]) -> list[dict[str, Any]]:
    _exact_fields(meta, _SPEC_FIELDS, "the spec object")
    if meta["format"] != FORMAT_VERSION or not _is_int(meta["format"]):
        raise SpecError(
            f"unsupported spec format {meta['format']!r:.40} (this version reads {FORMAT_VERSION})"
        )
    steps = meta["num_steps"]
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise SpecError(f"num_steps must be an integer in [1, {MAX_STEPS}], got {steps!r:.40}")
    layers = meta["layers"]
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        raise SpecError(f"layers must be a list of 1 to {MAX_LAYERS} layer objects")
    writable = meta["writable"]
    if not isinstance(writable, list) or len(writable) > 6 * len(layers):
        raise SpecError("writable must be a list of parameter names")
    if not all(isinstance(name, str) and len(name) <= 64 for name in writable):
        raise SpecError("writable must hold parameter names (strings such as 'fc0.weight')")
    for i, layer in enumerate(layers):
        _check_layer(i, layer)
    return layers


def _check_layer(i: int, layer: Any) -> None:
    if not isinstance(layer, dict):
        raise SpecError(f"layer {i} must be an object, got {type(layer).__name__}")
    _exact_fields(layer, _LAYER_FIELDS, f"layer {i}")
    for name in ("has_bias", "reset_delay"):
        if not isinstance(layer[name], bool):
            raise SpecError(f"layer {i}: {name} must be true or false, got {layer[name]!r:.40}")
    for name, allowed in (("reset", RESET_MODES), ("neuron", NEURON_KINDS), ("delay", (0, 1))):
        value = layer[name]
        if not any(value == a and type(value) is type(a) for a in allowed):
            choices = ", ".join(map(str, allowed))
            raise SpecError(f"layer {i}: {name} must be one of {choices}, got {value!r:.40}")
    scale, exp = layer["fixed_scale"], layer["fixed_weight_exp"]
    if scale is not None and not (
        isinstance(scale, (int, float))
        and not isinstance(scale, bool)
        and math.isfinite(scale)
        and 0 < scale <= MAX_FIXED_SCALE
    ):
        raise SpecError(
            f"layer {i}: fixed_scale must be a finite number in (0, {MAX_FIXED_SCALE:g}] or "
            f"null, got {scale!r:.40}"
        )
    if exp is not None and not (_is_int(exp) and WEIGHT_EXP_MIN <= exp <= WEIGHT_EXP_MAX):
        raise SpecError(
            f"layer {i}: fixed_weight_exp must be an integer in [{WEIGHT_EXP_MIN}, "
            f"{WEIGHT_EXP_MAX}] (Loihi 2's weight exponent) or null, got {exp!r:.40}"
        )


def _array_shapes(layers: list[dict[str, Any]]) -> dict[str, int]:
    """The arrays a spec object declares and the dimensions of each."""
    out: dict[str, int] = {}
    for i, layer in enumerate(layers):
        out[f"fc{i}.weight"] = 2
        if layer["has_bias"]:
            out[f"fc{i}.bias"] = 1
        out.update({f"lif{i}.du": 0, f"lif{i}.dv": 0, f"lif{i}.vth": 0, f"lif{i}.v_bias": 1})
    return out


def _exact_fields(obj: dict[str, Any], fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if f not in obj]
    extra = [f for f in obj if f not in fields]
    if missing:
        raise SpecError(f"malformed network spec: {what} lacks {', '.join(missing)}")
    if extra:
        raise SpecError(f"malformed network spec: {what} has unknown field(s) {extra!r:.80}")


# --------------------------------------------------------------------------- evaluate
def evaluate_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Any]:
    """(parameter sets, inputs) of an evaluate: float32 sets, bool/uint8/float32 inputs."""
    params = dict(arrays)
    inputs = params.pop("inputs", None)
    if inputs is None:
        raise ProtocolError("evaluate needs an 'inputs' array of shape (B, T, N_in)")
    if inputs.dtype.name not in INPUT_DTYPES:
        raise ProtocolError(
            f"evaluate 'inputs' must be one of {', '.join(INPUT_DTYPES)}, got {inputs.dtype.name}"
        )
    for name, value in params.items():
        if value.dtype != np.float32:
            raise ProtocolError(f"parameter {name!r} must be float32, got {value.dtype.name}")
    return params, inputs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
