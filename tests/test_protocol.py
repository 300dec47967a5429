"""Wire format: round trips, strict validation of hostile input, typed errors by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.protocol import (
    ALLOWED_DTYPES,
    PROTOCOL_VERSION,
    Limits,
    NotLoadedError,
    ProtocolError,
    decode,
    encode,
    error_from_wire,
    error_reply,
)
from polystep_neuro.core.errors import CapacityError, DeviceError, SpecError

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]


def _bytes(frames: list) -> list[bytes]:
    """What arrives on the other side: plain byte frames."""
    return [bytes(memoryview(f)) for f in frames]


def _header(**fields: object) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "op": "ping", "id": 1, **fields}).encode()


def test_allow_list_is_exactly_the_documented_dtypes() -> None:
    assert sorted({dt.name for dt in ALLOWED_DTYPES.values()}) == sorted(DTYPES)
    assert all(dt.byteorder in "<|=" for dt in ALLOWED_DTYPES.values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(dtype: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(-100, 100, size=(3, 4, 5)) if dtype != "bool" else rng.random((3, 4, 5))
    arr = (values > 0) if dtype == "bool" else values.astype(dtype)
    if dtype.startswith("float"):
        arr = arr * np.asarray(0.37, dtype=dtype)
    frames = encode({"op": "evaluate", "id": 9, "extra": {"k": [1, 2]}}, {"x": arr})
    header, arrays = decode(_bytes(frames))
    assert header["op"] == "evaluate" and header["id"] == 9 and header["extra"] == {"k": [1, 2]}
    assert header["arrays"] == [{"name": "x", "dtype": arr.dtype.str, "shape": [3, 4, 5]}]
    assert arrays["x"].dtype == arr.dtype and arrays["x"].shape == (3, 4, 5)
    np.testing.assert_array_equal(arrays["x"], arr)


def test_round_trip_zero_size_0d_and_noncontiguous_arrays() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    sent = {
        "empty": np.zeros((0, 7), dtype=np.float32),
        "empty3": np.zeros((2, 0, 3), dtype=np.int16),
        "scalar": np.asarray(2.5, dtype=np.float32),
        "flag": np.asarray(True),
        "strided": base[:, ::2],  # not C-contiguous: encode copies it
        "fortran": np.asfortranarray(base),
        "bigendian": base.astype(">f4"),  # converted to little-endian on the way out
    }
    header, got = decode(_bytes(encode({"op": "load", "id": "a-1"}, sent)))
    assert header["id"] == "a-1"
    assert list(got) == list(sent)
    for name, arr in sent.items():
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)
    assert got["scalar"].ndim == 0 and float(got["scalar"]) == 2.5
    assert got["bigendian"].dtype.str == "<f4"


def test_decode_is_zero_copy_on_the_frame_buffer() -> None:
    arr = np.arange(1000, dtype=np.float32)
    frames = _bytes(encode({"op": "ping", "id": 1}, {"a": arr}))
    buf = bytearray(frames[1])
    _, got = decode([frames[0], buf])
    buf[0:4] = np.float32(42.0).tobytes()  # the decoded array is a view on the frame
    assert got["a"][0] == 42.0


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (np.array([object()], dtype=object), "object"),
        (np.zeros(3, dtype=np.complex64), "complex64"),
        (np.zeros(3, dtype=np.float16), "float16"),
        (np.zeros(3, dtype="U3"), "<U3"),
        (np.zeros(2, dtype=[("a", "<f4")]), "a"),
    ],
)
def test_encode_refuses_dtypes_off_the_allow_list(value: np.ndarray, what: str) -> None:
    with pytest.raises(ProtocolError, match="cannot be sent; allowed: bool, uint8"):
        encode({"op": "ping", "id": 1}, {"x": value})


def test_encode_checks_limits_before_sending() -> None:
    small = Limits(max_array_bytes=100, max_total_bytes=150)
    with pytest.raises(ProtocolError, match="'w' declares shape \\[30\\] of float32 = 120 bytes"):
        encode({"op": "ping", "id": 1}, {"w": np.zeros(30, np.float32)}, small)
    with pytest.raises(ProtocolError, match="add up to more than the limit of 150"):
        encode(
            {"op": "ping", "id": 1},
            {"a": np.zeros(80, np.uint8), "b": np.zeros(80, np.uint8)},
            small,
        )
    with pytest.raises(ProtocolError, match="not plain JSON"):
        encode({"op": "ping", "id": 1, "x": float("nan")})
    with pytest.raises(ProtocolError, match="fills in 'v' and 'arrays'"):
        encode({"op": "ping", "id": 1, "v": 3})


GOOD_ARRAY = {"name": "x", "dtype": "<f4", "shape": [4]}
MALFORMED = [
    ([], "empty message"),
    ([b"\xff\xfe{"], "not UTF-8"),
    ([b"{not json"], "not valid JSON"),
    ([b""], "not valid JSON"),
    ([b'{"v": %d, "op": "ping", "id": NaN}' % PROTOCOL_VERSION], "NaN is not allowed"),
    ([b"[1, 2]"], "must be a JSON object, got list"),
    ([b"[" * 100_000 + b"]" * 100_000], "not valid JSON"),
    ([json.dumps({"op": "ping", "id": 1}).encode()], "missing the protocol version field 'v'"),
    ([_header(v=PROTOCOL_VERSION + 1)], f"unsupported protocol version {PROTOCOL_VERSION + 1}"),
    ([_header(v=True)], "missing the protocol version"),
    ([json.dumps({"v": PROTOCOL_VERSION, "id": 1}).encode()], "missing the 'op' field"),
    ([_header(op="explode")], "unknown op 'explode'; known ops: hello, load"),
    ([json.dumps({"v": PROTOCOL_VERSION, "op": "ping"}).encode()], "missing the request 'id'"),
    ([_header(id=[1])], "'id' must be an integer or a short string"),
    ([_header(arrays={"x": 1})], "'arrays' must be a list"),
    ([_header(arrays=[GOOD_ARRAY])], "declares 1 array(s) but the message has 0 data frame"),
    ([_header(arrays=[]), b"1234"], "declares 0 array(s) but the message has 1 data frame"),
    ([_header(arrays=[{"name": "x", "dtype": "<f4"}]), b""], "arrays[0] is missing the 'shape'"),
    ([_header(arrays=[{"dtype": "<f4", "shape": []}]), b""], "arrays[0] is missing the 'name'"),
    ([_header(arrays=["x"]), b""], "arrays[0] must be an object"),
    ([_header(arrays=[{**GOOD_ARRAY, "name": ""}]), b""], "name must be a non-empty"),
    ([_header(arrays=[{**GOOD_ARRAY, "dtype": "float33"}]), b"1234"], "'float33', which is not"),
    ([_header(arrays=[{**GOOD_ARRAY, "dtype": "O"}]), b"12345678"], "dtype 'O', which is not"),
    ([_header(arrays=[{**GOOD_ARRAY, "dtype": "|O"}]), b"12345678"], "dtype '|O', which is not"),
    ([_header(arrays=[{**GOOD_ARRAY, "dtype": ">f4"}]), b"x" * 16], "dtype '>f4', which is not"),
    ([_header(arrays=[{**GOOD_ARRAY, "dtype": 5}]), b"x" * 16], "dtype 5, which is not"),
    ([_header(arrays=[{**GOOD_ARRAY, "shape": [2.0]}]), b"x" * 8], "list of integers"),
    ([_header(arrays=[{**GOOD_ARRAY, "shape": [True]}]), b"x" * 4], "list of integers"),
    ([_header(arrays=[{**GOOD_ARRAY, "shape": [-1]}]), b""], "negative dimension in shape [-1]"),
    ([_header(arrays=[{**GOOD_ARRAY, "shape": [0, 10**30]}]), b""], "impossible dimension in"),
    ([_header(arrays=[{**GOOD_ARRAY, "shape": [1] * 9}]), b"x" * 4], "9 dimensions, over"),
    (
        [_header(arrays=[{**GOOD_ARRAY, "shape": [10**6, 10**6]}]), b"x" * 4],
        "= 4000000000000 bytes, over the per-array limit",
    ),
    ([_header(arrays=[GOOD_ARRAY]), b"x" * 10], "= 16 bytes, but its frame holds 10 bytes"),
    ([_header(arrays=[GOOD_ARRAY]), b"x" * 20], "= 16 bytes, but its frame holds 20 bytes"),
    ([_header(arrays=[GOOD_ARRAY, GOOD_ARRAY]), b"x" * 16, b"x" * 16], "'x' appears twice"),
]


@pytest.mark.parametrize(("frames", "message"), MALFORMED)
def test_decode_rejects_malformed_messages_with_a_precise_message(
    frames: list[bytes], message: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert message in str(info.value)


def test_decode_limits_are_configurable_and_checked_before_frames() -> None:
    with pytest.raises(ProtocolError, match="header frame is 1.. bytes, over the limit of 64"):
        decode([_header(pad="x" * 100)], Limits(max_header_bytes=64))
    small = Limits(max_arrays=2, max_total_bytes=20)
    three = [GOOD_ARRAY, {**GOOD_ARRAY, "name": "y"}, {**GOOD_ARRAY, "name": "z"}]
    with pytest.raises(ProtocolError, match="3 arrays, over the limit of 2"):
        decode([_header(arrays=three)], small)
    two = three[:2]  # 16 + 16 > 20, refused from the header alone (no frames needed)
    with pytest.raises(ProtocolError, match="add up to more than the limit of 20"):
        decode([_header(arrays=two), b"", b""], small)


def test_error_keeps_the_request_id_when_the_header_was_readable() -> None:
    with pytest.raises(ProtocolError) as info:
        decode([_header(id=77, op="nope")])
    assert info.value.request_id == 77  # type: ignore[attr-defined]


def test_reply_mode_skips_op_but_checks_the_error_field() -> None:
    header, _ = decode([json.dumps({"v": PROTOCOL_VERSION, "id": None}).encode()], reply=True)
    assert header["id"] is None
    with pytest.raises(ProtocolError, match="'error' must be an object"):
        decode([json.dumps({"v": PROTOCOL_VERSION, "id": 1, "error": "bad"}).encode()], reply=True)


class _LavaTrouble(CapacityError):
    """A backend-specific subclass the other side does not know."""


@pytest.mark.parametrize(
    ("exc", "cls", "message"),
    [
        (SpecError("bad shape"), SpecError, "bad shape"),
        (ProtocolError("bad frame"), ProtocolError, "bad frame"),
        (NotLoadedError("send load"), NotLoadedError, "send load"),
        (_LavaTrouble("too big"), CapacityError, "too big"),
        (ValueError("boom"), DeviceError, "ValueError: boom"),
        (KeyError("k"), DeviceError, "KeyError: 'k'"),
    ],
)
def test_errors_survive_the_wire_by_name(exc: Exception, cls: type, message: str) -> None:
    header, arrays = decode(_bytes(error_reply(exc, 5, "evaluate")), reply=True)
    assert header["id"] == 5 and header["op"] == "evaluate" and arrays == {}
    rebuilt = error_from_wire(header["error"]["type"], header["error"]["message"])
    assert type(rebuilt) is cls and str(rebuilt) == message


def test_unknown_error_names_become_device_error() -> None:
    err = error_from_wire("SomethingNew", "msg")
    assert type(err) is DeviceError and str(err) == "msg"


def test_limits_from_json() -> None:
    assert Limits.from_json(Limits(max_arrays=3).to_json()) == Limits(max_arrays=3)
    with pytest.raises(ProtocolError, match="'max_ndim' must be a positive integer"):
        Limits.from_json({"max_ndim": -1})


# ----------------------------------------------------------------------- fuzzing
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_of_random_bytes_only_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=4))
_shape = st.lists(st.one_of(st.integers(-3, 2**40), st.just(2.0), st.just("1")), max_size=10)
_descriptor = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=4), st.integers()),
        "dtype": st.one_of(
            st.sampled_from(sorted(ALLOWED_DTYPES) + ["O", ">f4", "V8"]), _json_leaf
        ),
        "shape": st.one_of(_shape, _json_leaf),
    },
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), _json_leaf),
        "op": st.one_of(st.sampled_from(["hello", "load", "evaluate", "ping", "x"]), _json_leaf),
        "id": _json_leaf,
        "arrays": st.one_of(st.lists(_descriptor, max_size=3), _json_leaf),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_headers, st.lists(st.binary(max_size=32), max_size=3))
def test_decode_of_structured_garbage_only_raises_protocol_error(
    header: dict, data: list[bytes]
) -> None:
    try:
        head = json.dumps(header).encode()
    except ValueError:
        return
    try:
        _, arrays = decode([head, *data])
    except ProtocolError:
        return
    for arr, frame in zip(arrays.values(), data, strict=True):  # accepted = as declared
        assert arr.nbytes == len(frame)
        assert arr.dtype in ALLOWED_DTYPES.values()


def test_protocol_server_and_network_import_without_torch() -> None:
    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import devices.protocol, devices.server, polystep_neuro.core.network\n"
        "import devices.remote\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
