"""Scale-out: V split over several device servers gives exactly one server's counts, also
when one of them is killed mid-use (its share moves to the others; it rejoins later)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.names import same_backend
from devices.registry import check_backend_name, open_backend
from devices.remote import RemoteBackend
from devices.sharded import ShardedBackend, split_range
from devices.spawn import ServerProcess
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec
from tests._servers import ThreadServer, spawn

WRITABLE = ("fc0.weight", "fc1.weight")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    """float32: a thread server and a process (the one the kill test kills); fixed: two
    thread servers.  The process starts in the background while the threads come up."""
    procs: list[ServerProcess] = []
    spawner = threading.Thread(target=lambda: procs.append(spawn("torch-sim")))
    spawner.start()
    threads = [ThreadServer("torch-sim"), ThreadServer("torch-sim-fixed")]
    threads.append(ThreadServer("torch-sim-fixed"))
    spawner.join(120)
    assert procs, "the torch-sim server process did not start"
    out = {
        "float32": [threads[0].endpoint, procs[0].endpoint],
        "loihi-fixed": [threads[1].endpoint, threads[2].endpoint],
        "procs": procs,  # the kill test appends the restarted process
    }
    yield out
    for server in threads:
        server.stop()
    for proc in out["procs"]:
        proc.stop()


def _spec() -> NetworkSpec:
    return NetworkSpec.random([8, 12, 3], 10, seed=4, writable=WRITABLE)


def _batch(num_sets: int = 7, seed: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    spec, rng = _spec(), np.random.default_rng(seed)
    params = {
        name: (spec.parameters()[name] + rng.normal(0, 0.5, size=(num_sets, *shape))).astype(
            np.float32
        )
        for name, shape in spec.writable_shapes().items()
    }
    inputs = (rng.random((5, 10, 8)) < 0.5).astype(np.float32)
    return params, inputs


def _reference(endpoint: str, params: dict, inputs: np.ndarray) -> np.ndarray:
    with RemoteBackend(endpoint) as one:
        one.load(_spec())
        counts = one.evaluate(params, inputs)
    assert counts.sum() > 0
    return counts


def _spy(
    sharded: ShardedBackend, meet: threading.Barrier | None = None
) -> list[tuple[str, int, str]]:
    """Record (endpoint, V, worker thread) of every request each shard sends; with ``meet``,
    each request waits there for the others first (it breaks, failing the call, unless they
    are in flight at the same time)."""
    calls: list[tuple[str, int, str]] = []
    for ep in sharded._endpoints:

        def wrapped(batch: Any, ep: Any = ep, real: Any = ep.backend.run_batch):
            calls.append((ep.address, batch.num_sets, threading.current_thread().name))
            if meet is not None and not meet.broken:
                meet.wait()
            return real(batch)

        ep.backend.run_batch = wrapped
    return calls


# ----------------------------------------------------------------------- splitting
@given(
    st.integers(0, 50),
    st.integers(1, 300),
    st.lists(st.integers(1, 64), min_size=1, max_size=6),
)
def test_split_range_is_contiguous_complete_and_proportional(
    start: int, size: int, weights: list[int]
) -> None:
    pieces = split_range(start, start + size, weights)
    assert len(pieces) == len(weights)
    assert pieces[0][0] == start and pieces[-1][1] == start + size
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    for (lo, hi), w in zip(pieces, weights, strict=True):
        assert abs((hi - lo) - size * w / sum(weights)) < 1.0


def test_backend_names_take_endpoint_lists() -> None:
    check_backend_name("tcp://a:1,tcp://b:2")
    with pytest.raises(DeviceUnavailable, match="unknown backend"):
        check_backend_name("tcp://a:1,torch-sim")
    with pytest.raises(DeviceError, match="listed twice"):
        open_backend("tcp://127.0.0.1:9, tcp://127.0.0.1:9")


def test_same_backend_reads_endpoints_by_address() -> None:
    """--resume compares the backend a run started on with the one named now: one loopback
    server spelt two ways is the same device, another port or another name is not."""
    assert same_backend("tcp://localhost:5555", "tcp://127.0.0.1:5555")
    assert same_backend(
        "tcp://127.0.0.1:1,tcp://localhost:2", ["tcp://127.0.0.1:1", "tcp://[::1]:2"]
    )
    assert not same_backend("tcp://localhost:5555", "tcp://127.0.0.1:5556")
    assert not same_backend(
        "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "tcp://127.0.0.1:2,tcp://127.0.0.1:1"
    )
    assert not same_backend("tcp://localhost:5555", "torch-sim")
    assert same_backend("torch-sim-fixed", "torch-sim-fixed")
    assert not same_backend("torch-sim", "torch-sim-fixed")


# ----------------------------------------------------------------------- parity
@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_sharded_counts_equal_one_server(servers: dict, precision: str) -> None:
    first, second = servers[precision]
    params, inputs = _batch()
    expected = _reference(first, params, inputs)
    for name in ([first, second], f"{first},{second}"):
        with open_backend(name, timeout_s=20) as sharded:
            assert isinstance(sharded, ShardedBackend)
            caps = sharded.capabilities
            assert caps.precision == precision and caps.is_remote
            sharded.load(_spec())
            # V=7 over two servers: 4 + 3, in order, both requests in flight at once (each
            # waits for the other before it is sent)
            meet = threading.Barrier(2, timeout=10)
            calls = _spy(sharded, meet)
            got = sharded.evaluate(params, inputs)
            assert not meet.broken
            assert got.dtype == np.int32 and got.flags.writeable
            np.testing.assert_array_equal(got, expected)
            assert sorted(c[:2] for c in calls) == sorted([(first, 4), (second, 3)])
            meet.abort()  # one set next: one server does it, nobody to wait for
            # one set, and "the loaded network" ({}): one server does it
            np.testing.assert_array_equal(
                sharded.evaluate({k: v[2:3] for k, v in params.items()}, inputs), expected[2:3]
            )
            assert sharded.evaluate({}, inputs).shape == (1, 5, 3)


def test_mixed_precision_is_refused(servers: dict) -> None:
    with pytest.raises(DeviceError, match="different precision"):
        open_backend([servers["float32"][0], servers["loihi-fixed"][0]])


def test_unreachable_endpoint_at_open_is_named(servers: dict) -> None:
    with pytest.raises(DeviceUnavailable, match=r"1 failed at open .*tcp://127.0.0.1:9"):
        open_backend([servers["float32"][0], "tcp://127.0.0.1:9"], connect_timeout_s=0.3, retries=1)


# ----------------------------------------------------------------------- failures
def test_killing_one_server_mid_use_keeps_counts_complete(
    servers: dict, caplog: pytest.LogCaptureFixture
) -> None:
    alive, doomed = servers["float32"]
    proc = servers["procs"][0]
    assert proc.endpoint == doomed
    params, inputs = _batch(num_sets=9, seed=2)
    expected = _reference(alive, params, inputs)
    sharded = open_backend(
        [alive, doomed], timeout_s=0.5, connect_timeout_s=0.5, retries=2, revive_after_s=0.5
    )
    assert isinstance(sharded, ShardedBackend)
    calls = _spy(sharded)
    with sharded, caplog.at_level(logging.WARNING):
        sharded.load(_spec())
        np.testing.assert_array_equal(sharded.evaluate(params, inputs), expected)

        proc.process.kill()  # SIGKILL between two evaluates of one session
        proc.process.wait(10)
        calls.clear()
        start = time.monotonic()
        np.testing.assert_array_equal(sharded.evaluate(params, inputs), expected)
        took = time.monotonic() - start
        assert took < 5.0  # 2 tries of 0.5 s, then the share is redone on the survivor
        assert f"dropping {doomed} from the shard set" in caplog.text
        assert sharded.live_endpoints == [alive]
        assert "(down)" in sharded.capabilities.device
        # the doomed shard (4 of 9) was tried, then recomputed by the survivor
        assert sorted(c[:2] for c in calls) == sorted([(alive, 5), (doomed, 4), (alive, 4)])
        np.testing.assert_array_equal(sharded.evaluate(params, inputs), expected)

        # restarted on the same port: probed in the background, re-loaded, back in use
        servers["procs"].append(spawn("torch-sim", bind=doomed))
        deadline = time.monotonic() + 60
        while len(sharded.live_endpoints) < 2:
            assert time.monotonic() < deadline, "the restarted server never rejoined"
            np.testing.assert_array_equal(sharded.evaluate(params, inputs), expected)
            time.sleep(0.2)
        assert f"{doomed} answers again" in caplog.text
        calls.clear()
        np.testing.assert_array_equal(sharded.evaluate(params, inputs), expected)
        assert sorted(c[:2] for c in calls) == sorted([(alive, 5), (doomed, 4)])
    print(f"evaluate with one of two servers dead: {took:.2f} s")
