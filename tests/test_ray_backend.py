"""The ray backend: V split across Ray actors gives exactly one in-process backend's counts,
also when an actor is killed between or during calls (its share moves to the others).

Needs Ray (`pip install -e ".[ray]"`); without it these tests skip, unless
POLYSTEP_REQUIRE_RAY=1 (CI), where a missing Ray is a failure.  A local Ray of 2 CPUs is
started once for the module; actors reserve a quarter CPU each so the shared backends and
a test's fresh ones fit in it together.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Keep this test's local Ray on loopback (Ray otherwise listens on every interface).  Read
# by Ray at import, so it is set before the import below.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

if os.environ.get("POLYSTEP_REQUIRE_RAY") == "1":
    import ray  # POLYSTEP_REQUIRE_RAY=1: a missing Ray fails here, loudly
else:
    ray = pytest.importorskip(
        "ray", reason='Ray is not installed (pip install -e ".[ray]"); the ray backend is untested'
    )

from devices.catalog import RECORDS  # noqa: E402
from devices.ray_backend import RayBackend, _placement  # noqa: E402
from devices.registry import check_backend_name, describe_backends, open_backend  # noqa: E402
from devices.torch_sim import TorchSimBackend  # noqa: E402
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable, SpecError  # noqa: E402
from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from tests._servers import ThreadServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRITABLE = ("fc0.weight", "fc1.weight")
CPUS = 0.25  # Ray CPUs reserved per actor in these tests
PRECISIONS = {"torch-sim": "float32", "torch-sim-fixed": "loihi-fixed"}
RAY_OPTIONS = tuple(RECORDS["ray"].options)


def _spec(sizes: tuple[int, ...] = (8, 12, 3), steps: int = 10) -> NetworkSpec:
    return NetworkSpec.random(list(sizes), steps, seed=4, writable=WRITABLE)


def _batch(
    num_sets: int, spec: NetworkSpec | None = None, batch: int = 5, seed: int = 1
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    spec, rng = spec or _spec(), np.random.default_rng(seed)
    params = {
        name: (spec.parameters()[name] + rng.normal(0, 0.5, size=(num_sets, *shape))).astype(
            np.float32
        )
        for name, shape in spec.writable_shapes().items()
    }
    inputs = (rng.random((batch, spec.num_steps, spec.n_in)) < 0.5).astype(np.float32)
    return params, inputs


def _reference(name: str, spec: NetworkSpec, params: dict, inputs: np.ndarray) -> np.ndarray:
    """The in-process backend's counts for the same call."""
    with TorchSimBackend(PRECISIONS[name], "cpu") as local:
        local.load(spec)
        counts = local.evaluate(params, inputs).numpy()
    assert counts.sum() > 0
    return counts


def _spy(backend: RayBackend) -> list[tuple[int, tuple[int, int]]]:
    """Record (actor index, V range) of every share the backend sends."""
    calls: list[tuple[int, tuple[int, int]]] = []
    real = backend._submit

    def submit(actor: Any, share: tuple[int, int], *args: Any) -> Any:
        calls.append((actor.index, share))
        return real(actor, share, *args)

    backend._submit = submit  # type: ignore[method-assign]
    return calls


# ----------------------------------------------------------------------- without a Ray runtime
def test_names_options_and_listing_need_no_ray_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    check_backend_name("ray:torch-sim-fixed")
    check_backend_name("ray:tcp://127.0.0.1:9,tcp://127.0.0.1:10")
    for bare in ("ray", "ray:"):
        with pytest.raises(
            DeviceUnavailable, match=r"name it ray:NAME, e\.g\. ray:torch-sim-fixed"
        ):
            check_backend_name(bare)
    with pytest.raises(DeviceUnavailable, match="^'ray:nope', what its actors run: unknown "
                       "backend 'nope'"):  # fmt: skip
        check_backend_name("ray:nope")
    with pytest.raises(DeviceUnavailable, match="cannot run another ray backend"):
        check_backend_name("ray:ray:torch-sim")
    with pytest.raises(DeviceError) as unknown:
        open_backend("ray:torch-sim", workerz=2)
    assert str(unknown.value) == (
        "the ray backend takes no option 'workerz'; it accepts: " + ", ".join(RAY_OPTIONS) + " "
        "(options for the backend inside each actor go in backend_options={...})"
    )
    assert RAY_OPTIONS[:3] == ("backend", "workers", "backend_options")
    with pytest.raises(DeviceError, match="names the backend already; leave out backend="):
        open_backend("ray:torch-sim", backend="torch-sim-fixed")
    with pytest.raises(DeviceError, match="needs to know what each actor runs"):
        open_backend("ray")
    with pytest.raises(DeviceError, match=r"device='cuda' with num_gpus=0"):
        open_backend("ray:torch-sim", device="cuda", num_gpus=0)
    with pytest.raises(DeviceError, match=r"backend lists 2 backends .* but workers=3"):
        open_backend("ray", backend=["torch-sim", "torch-sim"], workers=3)
    # each actor's options are checked against what its backend takes, here
    with pytest.raises(DeviceError) as inner:
        open_backend("ray:torch-sim", workers=1, cpus_per_worker=CPUS, backend_options={"bogus": 1})
    assert str(inner.value).startswith(
        "the torch-sim backend takes no option 'bogus'; it accepts: device, chunk_elements"
    )
    # a device server chooses its own device: asking one for a device is refused too
    with pytest.raises(DeviceError, match="the remote backend takes no option 'device'"):
        open_backend("ray:tcp://127.0.0.1:9", device="cpu")
    assert not ray.is_initialized()  # all refused before Ray was started
    # where the torch-sim inside an actor runs: on a GPU only when Ray reserved one for it
    assert _placement(None, None) == ("cpu", 0.0)
    assert _placement("auto", 0.5) == ("cuda", 0.5)
    assert _placement("cuda", None) == ("cuda", 1.0)
    assert _placement(torch.device("cpu"), None) == ("cpu", 0.0)

    rows = {name: (usable, what) for name, usable, what in describe_backends()}
    assert rows["ray"] == (True, rows["ray"][1]) and f"Ray {ray.__version__}" in rows["ray"][1]
    # as a machine without Ray sees it
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "devices.ray_backend", None)
    usable, what = {n: (u, w) for n, u, w in describe_backends()}["ray"]
    assert not usable and what.endswith('Ray not installed: pip install -e ".[ray]"')
    with pytest.raises(DeviceUnavailable, match=r'needs Ray, .*: pip install -e "\.\[ray\]"'):
        open_backend("ray:torch-sim")


def test_backend_starts_ray_and_the_last_one_closed_shuts_it_down() -> None:
    assert not ray.is_initialized(), "runs before the module's Ray fixture"
    spec = _spec()
    params, inputs = _batch(3, spec)
    first = open_backend("ray:torch-sim", workers=1, num_cpus=2)
    try:
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
        # a local Ray this backend started cannot grow: refused at once, not after a wait
        with pytest.raises(DeviceError, match=r"3 Ray actors asking for 1 CPU each do not fit"):
            open_backend("ray:torch-sim", workers=3)
        second = open_backend("ray:torch-sim", workers=1)  # shares the running Ray
        second.load(spec)
        first.close()
        assert ray.is_initialized()  # still used by the second
        np.testing.assert_array_equal(
            second.evaluate(params, inputs), _reference("torch-sim", spec, params, inputs)
        )
        second.close()
        assert not ray.is_initialized()
    finally:
        first.close()
        ray.shutdown()


# ----------------------------------------------------------------------- one Ray for the rest
@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shared(ray_runtime: None) -> Iterator[dict[str, RayBackend]]:
    """A two-actor backend of each kind, loaded with _spec()."""
    backends = {
        name: open_backend("ray", backend=name, workers=2, cpus_per_worker=CPUS)
        for name in PRECISIONS
    }
    for backend in backends.values():
        backend.load(_spec())
    yield backends  # type: ignore[misc]
    for backend in backends.values():
        backend.close()
    assert ray.is_initialized()  # the fixture's Ray: not the backends' to shut down


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_counts_equal_the_in_process_backend(shared: dict[str, RayBackend], name: str) -> None:
    backend, spec = shared[name], _spec()
    caps = backend.capabilities
    assert (caps.name, caps.precision, caps.is_remote) == ("ray", PRECISIONS[name], True)
    assert caps.device == f"2 Ray actors running {name} (PyTorch LIF simulator on CPU)"
    assert caps.writable == RECORDS[name].writable
    with TorchSimBackend(PRECISIONS[name], "cpu") as local:
        local.load(spec)
        assert _same_spec(backend.spec, local.spec)  # fixed point: the same calibration
    calls = _spy(backend)

    params, inputs = _batch(7, spec)  # V=7 over 2 actors: 4 + 3
    got = backend.evaluate(params, inputs)
    assert got.dtype == np.int32 and got.flags.writeable
    np.testing.assert_array_equal(got, _reference(name, spec, params, inputs))
    assert calls == [(0, (0, 4)), (1, (4, 7))]

    calls.clear()  # V=1, given as torch tensors (as the controller sends them): one actor
    one = {k: torch.as_tensor(v[2:3]) for k, v in params.items()}
    np.testing.assert_array_equal(
        backend.evaluate(one, torch.as_tensor(inputs)), _reference(name, spec, one, inputs)
    )
    assert calls == [(0, (0, 1))]

    # {}: the loaded network's own values; a parameter not given keeps its loaded value
    loaded = _reference(name, spec, {}, inputs)
    np.testing.assert_array_equal(backend.evaluate({}, inputs), loaded)
    partial = {"fc0.weight": params["fc0.weight"]}
    expected = _reference(name, spec, partial, inputs)
    np.testing.assert_array_equal(backend.evaluate(partial, inputs), expected)
    assert not np.array_equal(expected, _reference(name, spec, params, inputs))
    fc1 = {"fc1.weight": np.stack([spec.layers[1].weight] * 3)}
    np.testing.assert_array_equal(backend.evaluate(fc1, inputs), np.stack([loaded[0]] * 3))


def test_float_inputs_reach_the_actors_unchanged(shared: dict[str, RayBackend]) -> None:
    spec = _spec()
    params, _ = _batch(5, spec)
    rates = np.random.default_rng(3).random((4, 10, 8)).astype(np.float32) * 1.5
    np.testing.assert_array_equal(
        shared["torch-sim"].evaluate(params, rates),
        _reference("torch-sim", spec, params, rates),
    )


def test_errors_keep_their_type_and_message(shared: dict[str, RayBackend]) -> None:
    fixed = shared["torch-sim-fixed"]
    # a spec only the backend inside the actor refuses: SpecError, word for word
    subtract = NetworkSpec.random([8, 12, 3], 10, seed=4, reset="subtract", writable=WRITABLE)
    with pytest.raises(SpecError) as local:
        TorchSimBackend("loihi-fixed", "cpu").load(subtract)
    with pytest.raises(SpecError) as remote:
        fixed.load(subtract)
    assert type(remote.value) is SpecError and str(remote.value) == str(local.value)
    # bad parameter sets are refused before any actor is asked, with the same message
    spec = _spec()
    with TorchSimBackend("loihi-fixed", "cpu") as one:
        one.load(spec)
        for bad in (
            {"fc0.weight": np.zeros((2, 12, 9), np.float32)},
            {"lif0.vth": np.ones((2,), np.float32)},
        ):
            with pytest.raises(SpecError) as want:
                one.evaluate(bad, _batch(1)[1])
            with pytest.raises(SpecError) as got:
                fixed.evaluate(bad, _batch(1)[1])
            assert str(got.value) == str(want.value)
    params, inputs = _batch(3)  # the backend still works after refusing
    np.testing.assert_array_equal(
        fixed.evaluate(params, inputs), _reference("torch-sim-fixed", spec, params, inputs)
    )


def test_one_actor_per_device_server(ray_runtime: None) -> None:
    """Each actor a client of its own device server (tcp://), named ray:tcp://A,tcp://B."""
    servers = [ThreadServer("torch-sim"), ThreadServer("torch-sim")]
    try:
        name = "ray:" + ",".join(s.endpoint for s in servers)
        with open_backend(name, cpus_per_worker=CPUS) as backend:
            assert backend.capabilities.device == (
                f"2 Ray actors running {servers[0].endpoint} (PyTorch LIF simulator on CPU); "
                f"{servers[1].endpoint} (PyTorch LIF simulator on CPU)"
            )
            spec = _spec()
            backend.load(spec)
            calls = _spy(backend)
            params, inputs = _batch(5, spec)
            np.testing.assert_array_equal(
                backend.evaluate(params, inputs), _reference("torch-sim", spec, params, inputs)
            )
            assert calls == [(0, (0, 3)), (1, (3, 5))]
    finally:
        for server in servers:
            server.stop()


# ----------------------------------------------------------------------- failures
def test_killed_actor_between_calls_then_all_dead(
    ray_runtime: None, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec()
    params, inputs = _batch(9, spec, seed=2)
    expected = _reference("torch-sim-fixed", spec, params, inputs)
    backend = open_backend("ray:torch-sim-fixed", workers=2, cpus_per_worker=CPUS)
    with backend, caplog.at_level(logging.WARNING, logger="devices.ray_backend"):
        backend.load(spec)
        np.testing.assert_array_equal(backend.evaluate(params, inputs), expected)
        calls = _spy(backend)
        _kill(backend, 1)
        np.testing.assert_array_equal(backend.evaluate(params, inputs), expected)
        # actor 1's share (4 of 9) was sent, found dead, and redone by actor 0
        assert calls == [(0, (0, 5)), (1, (5, 9)), (0, (5, 9))]
        assert "dropping ray actor 1 of 2 (torch-sim-fixed" in caplog.text
        assert "killed by `ray.kill`" in caplog.text
        assert backend.live_workers == [0]
        assert backend.capabilities.device.endswith(", 1 of them dropped")
        calls.clear()
        np.testing.assert_array_equal(backend.evaluate(params, inputs), expected)
        assert calls == [(0, (0, 9))]

        _kill(backend, 0)
        with pytest.raises(DeviceUnavailable) as info:
            backend.evaluate(params, inputs)
        assert str(info.value).startswith("all 2 Ray actors are dropped, none can evaluate: ")
        assert "Open a new ray backend to start fresh actors" in str(info.value)
        with pytest.raises(DeviceUnavailable, match="none can load"):
            backend.load(spec)
    for call in (lambda: backend.evaluate(params, inputs), lambda: backend.load(spec)):
        with pytest.raises(DeviceError, match="^ray: backend is closed$"):
            call()


def test_killed_actor_during_a_call(ray_runtime: None, caplog: pytest.LogCaptureFixture) -> None:
    """The kill lands while the actors compute their shares (about a second each)."""
    spec = _spec((64, 512, 10), 50)
    params, inputs = _batch(24, spec, batch=64, seed=5)
    expected = _reference("torch-sim-fixed", spec, params, inputs)
    with open_backend("ray:torch-sim-fixed", workers=2, cpus_per_worker=CPUS) as backend:
        backend.load(spec)
        real = backend._submit
        doomed = backend.actors[0]

        def submit_then_kill(actor: Any, share: tuple[int, int], *args: Any) -> Any:
            ref = real(actor, share, *args)
            if actor.handle is doomed:
                ray.kill(doomed)  # its call is already on its way
            return ref

        backend._submit = submit_then_kill  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="devices.ray_backend"):
            np.testing.assert_array_equal(backend.evaluate(params, inputs), expected)
        assert "dropping ray actor 0 of 2 (torch-sim-fixed" in caplog.text
        assert backend.live_workers == [1]

        # an actor slower than worker_timeout_s is killed and dropped like a dead one
        backend._submit = real  # type: ignore[method-assign]
        backend.worker_timeout_s = 0.01
        with pytest.raises(DeviceUnavailable) as info:
            backend.evaluate(params, inputs)
        assert "actor 1 (torch-sim-fixed): no answer within 0.01 s" in str(info.value)


def test_quick_bench_section_runs(tmp_path: Path) -> None:
    """`polystep-neuro bench --quick --only ray` (its own local Ray): tables and numeric ratios."""
    out = tmp_path / "bench.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "polystep_neuro.bench",
            "--quick",
            "--only",
            "ray",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "## 1. Ray: " in text
    assert "counts identical across in-process, 1 and 2 Ray workers: yes" in text
    assert _ratio(text, r"2 workers / 1 worker throughput: (\d+\.\d+)x") > 0
    assert _ratio(text, r"Ray / in-process per-call time \(median\): (\d+\.\d+)x") > 0


def _kill(backend: RayBackend, index: int) -> None:
    """ray.kill one actor and wait until its process is gone (ray.kill only asks for it)."""
    pid = backend.worker_pids[index]
    ray.kill(backend.actors[index])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        assert time.monotonic() < deadline, f"actor {index} (pid {pid}) still runs"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"  # gone while we looked


def _ratio(text: str, pattern: str) -> float:
    import re

    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the report:\n{text}"
    return float(match.group(1))


def _same_spec(a: NetworkSpec, b: NetworkSpec) -> bool:
    meta_a, arrays_a = a.to_arrays()
    meta_b, arrays_b = b.to_arrays()
    return meta_a == meta_b and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
