"""The Lava backends against the torch simulator, through the real device server.

Needs the Lava env (`polystep-neuro devices setup-lava`); without it these tests skip, unless
POLYSTEP_REQUIRE_LAVA=1 (CI), where a missing env is a failure.

- lava-fixed (Lava fixed_pt) and torch-sim-fixed: bit-identical spike counts for batched
  parameter sets (readout-only and all-weights writable sets, biases, several seeds, input
  densities, negative weight exponents, 24-bit current wrap-around).
- lava (Lava floating_pt, float64) and torch-sim (float32): at least FLOAT_AGREEMENT of the
  count entries identical (spikes differ only where v lands within rounding of vth).
- per-step voltages, currents and spikes of a Lava graph: bit-identical with the numpy
  transcription of Lava's models (run inside the Lava venv).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from devices.lava_env import find_lava_env, venv_python
from devices.torch_sim import TorchSimBackend
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point as fp
from simulators.torch_lif import TorchLIF

FLOAT_AGREEMENT = 0.99  # measured: 0.999+ (see test_float_agreement)
ROOT = Path(__file__).resolve().parents[1]


def _lava_env() -> Path:
    venv = find_lava_env()
    if venv is None:
        message = "no Lava env: run `polystep-neuro devices setup-lava` (needs Python 3.10)"
        if os.environ.get("POLYSTEP_REQUIRE_LAVA") == "1":
            pytest.fail(f"POLYSTEP_REQUIRE_LAVA=1 but {message}")
        pytest.skip(message)
    return venv


@pytest.fixture(scope="module")
def lava_fixed():
    _lava_env()
    from devices.lava import LavaBackend

    backend = LavaBackend("fixed_pt")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def lava_float():
    _lava_env()
    from devices.lava import LavaBackend

    backend = LavaBackend("floating_pt")
    yield backend
    backend.close()


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    spec: NetworkSpec
    num_sets: int
    batch: int
    density: float
    seed: int


def _perturbed(spec: NetworkSpec, num_sets: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {}
    for name in spec.writable:
        base = spec.parameters()[name]
        noise = rng.standard_normal((num_sets, *base.shape)).astype(np.float32)
        if name.endswith("bias"):
            params[name] = base[None] + 0.3 * noise
        else:
            params[name] = base[None] * (1 + 0.3 * noise)
    return params


def _cases() -> list[Case]:
    readout = NetworkSpec.random(
        [32, 48, 6], 20, seed=0, du=0.3, dv=0.1, weight_gain=3.0, writable=("fc1.weight",)
    )
    all_weights = NetworkSpec.random(
        [16, 24, 20, 5],
        18,
        seed=1,
        du=0.2,
        dv=0.05,
        weight_gain=3.5,
        writable=("fc0.weight", "fc1.weight", "fc2.weight"),
    )
    biases = NetworkSpec.random(
        [20, 30, 6],
        16,
        seed=2,
        du=1.0,
        dv=0.2,
        weight_gain=2.5,
        bias=True,
        writable=("fc0.bias", "fc1.weight", "lif0.v_bias", "lif1.v_bias"),
    )
    # thresholds far above any one weight (vth > 16 max|w|): weight_exp < 0, activations
    # shifted right; mostly positive weights and long current memory still make spikes
    rng = np.random.default_rng(3)
    w0, w1 = rng.normal(0.3, 0.5, (30, 60)), rng.normal(0.3, 0.5, (5, 30))
    quiet_layers = [
        LayerSpec(weight=w0, du=0.05, dv=0.02, vth=20 * float(np.abs(w0).max())),
        LayerSpec(weight=w1, du=0.05, dv=0.02, vth=20 * float(np.abs(w1).max())),
    ]
    quiet = NetworkSpec(quiet_layers, 20, ("fc0.weight", "fc1.weight")).validate()
    # all-positive strong input, no current decay: u passes 2**23 and wraps (the scale set
    # by hand to the threshold-only rule: calibrate() itself leaves headroom below the wrap)
    rng = np.random.default_rng(4)
    w_loud = np.abs(rng.normal(0, 1, (12, 48))) + 0.5
    base = fp.WEIGHT_MAX / float(w_loud.max())
    exp = int(np.floor(np.log2(4096 / base)))
    loud_layers = [
        LayerSpec(weight=w_loud, du=0.0, dv=0.3, fixed_scale=base * 2.0**exp, fixed_weight_exp=exp),
        LayerSpec(weight=rng.normal(0, 1, (4, 12)), du=0.5, dv=0.1),
    ]
    loud = NetworkSpec(loud_layers, 24, ("fc1.weight", "lif0.v_bias")).validate()
    return [
        Case("readout", readout, 8, 10, 0.25, 0),
        Case("readout-dense", readout, 8, 10, 0.6, 1),
        Case("all-weights", all_weights, 6, 8, 0.4, 2),
        Case("biases", biases, 5, 7, 0.3, 3),
        Case("negative-weight-exp", quiet, 6, 8, 0.5, 4),
        Case("u-wrap", loud, 4, 6, 0.9, 5),
    ]


CASES = _cases()


def _inputs(case: Case) -> np.ndarray:
    rng = np.random.default_rng(100 + case.seed)
    shape = (case.batch, case.spec.num_steps, case.spec.n_in)
    return (rng.random(shape) < case.density).astype(np.float32)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixed_counts_bit_identical(lava_fixed, case: Case) -> None:
    spec = fp.calibrate(case.spec)
    params = _perturbed(spec, case.num_sets, case.seed)
    x = _inputs(case)
    lava_fixed.load(spec)
    torch_sim = TorchSimBackend("loihi-fixed", device="cpu")
    torch_sim.load(spec)
    got = lava_fixed.evaluate(params, x)
    want = torch_sim.evaluate(params, x).numpy()
    assert got.shape == (case.num_sets, case.batch, spec.n_out)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} differ"
    assert want.sum() > 0 and (want != want[:1]).any()  # spikes, and the sets differ
    # loaded values (no params) after candidate sets were written
    assert np.array_equal(lava_fixed.evaluate({}, x), torch_sim.evaluate({}, x).numpy())
    if case.name == "negative-weight-exp":
        assert spec.layers[0].fixed_weight_exp < 0 and spec.layers[1].fixed_weight_exp < 0
    if case.name == "u-wrap":
        currents = TorchLIF(spec, "loihi-fixed").evaluate({}, x, record=True).currents
        assert currents is not None and float(currents[0].min()) < 0  # wrapped past 2**23


def test_float_agreement(lava_float) -> None:
    """Lava float64 vs torch float32: nearly all count entries identical."""
    same = total = 0
    for case in CASES:
        spec = case.spec
        params = _perturbed(spec, case.num_sets, case.seed)
        x = _inputs(case)
        lava_float.load(spec)
        torch_sim = TorchSimBackend("float32", device="cpu")
        torch_sim.load(spec)
        got = lava_float.evaluate(params, x)
        want = torch_sim.evaluate(params, x).numpy()
        same += int((got == want).sum())
        total += got.size
    print(f"floating_pt vs torch float32: {same}/{total} count entries identical")
    assert same / total >= FLOAT_AGREEMENT


def test_float_thresholds_are_writable(lava_float) -> None:
    spec = NetworkSpec.random(
        [24, 32, 5],
        20,
        seed=6,
        du=0.3,
        dv=0.1,
        weight_gain=3.0,
        writable=("fc1.weight", "lif0.vth", "lif1.vth"),
    )
    params = _perturbed(spec, 6, 6)
    x = _inputs(Case("vth", spec, 6, 8, 0.3, 6))
    lava_float.load(spec)
    torch_sim = TorchSimBackend("float32", device="cpu")
    torch_sim.load(spec)
    got, want = lava_float.evaluate(params, x), torch_sim.evaluate(params, x).numpy()
    assert (got == want).mean() >= FLOAT_AGREEMENT


def test_voltages_bit_identical_in_lava_env() -> None:
    venv = _lava_env()
    out = subprocess.run(
        [str(venv_python(venv)), "-m", "tests.lava_env_checks"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for check in result["voltages"]:
        assert check["entries"] > 10000 and check["reference_spikes"] > 100
        assert check["mismatches"] == 0, check
    assert result["chunked"]["exact"]
    loihi2 = result["loihi2_path"]
    assert loihi2["equal"]
    # small chip limits: V = 3 split into runs of 2 + 1, counts equal one lava-fixed run
    assert loihi2["splits"] == {"loihi2": [3], "loihi2_split": [2, 1], "fixed_pt": [3]}
    assert loihi2["split_equal"] and loihi2["spikes"] > 0
    assert loihi2["capacity_message"].startswith("one replica does not fit on Loihi 2")
    assert "it needs 4 neuro-cores" in loihi2["capacity_message"]
    assert "lava-loihi" in loihi2["unavailable_message"]


# ----------------------------------------------------------------------------- behaviour
def test_rejections_name_the_parameters(lava_fixed) -> None:
    spec = NetworkSpec.random([8, 6, 3], 10, writable=("fc1.weight", "lif1.vth"))
    with pytest.raises(SpecError, match=r"cannot change lif1\.vth .*fc<i>\.weight"):
        lava_fixed.load(spec)
    snn_torch_style = replace(spec.layers[0], delay=0)
    other = NetworkSpec([snn_torch_style, spec.layers[1]], 10, ("fc1.weight",))
    with pytest.raises(SpecError, match="delay 1"):
        lava_fixed.load(other)
    with pytest.raises(SpecError, match="binary"):
        lava_fixed.load(fp.calibrate(NetworkSpec.random([8, 6, 3], 10)))
        lava_fixed.evaluate({}, np.full((2, 10, 8), 0.5, np.float32))


def test_capabilities_and_no_orphans(monkeypatch: pytest.MonkeyPatch) -> None:
    _lava_env()
    from devices.lava import LavaBackend

    monkeypatch.setenv("POLYSTEP_LAVA_MAX_VERTICES", "4")  # V=10 runs as 3 graph passes
    backend = LavaBackend("fixed_pt")
    pid = backend.server_pid
    assert pid is not None
    try:
        caps = backend.capabilities
        assert (caps.name, caps.precision, caps.is_remote) == ("lava-fixed", "loihi-fixed", False)
        assert "fixed_pt" in caps.device and "up to 4 replicas" in caps.device
        spec = fp.calibrate(NetworkSpec.random([10, 12, 3], 12, seed=7, writable=("fc1.weight",)))
        backend.load(spec)
        params = _perturbed(spec, 10, 7)
        x = (np.random.default_rng(7).random((5, 12, 10)) < 0.4).astype(np.float32)
        torch_sim = TorchSimBackend("loihi-fixed", device="cpu")
        torch_sim.load(spec)
        assert np.array_equal(backend.evaluate(params, x), torch_sim.evaluate(params, x).numpy())
    finally:
        backend.close()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and all of Lava's worker processes are gone


def test_a_second_client_of_a_lava_server_is_told_who_holds_it(lava_fixed) -> None:
    """One graph per Lava server: a second client gets Busy naming the client that holds
    the device, never that client's network."""
    from devices.protocol import Busy
    from devices.remote import RemoteBackend

    spec = NetworkSpec.random([8, 12, 3], 10, seed=4, writable=("fc1.weight",))
    lava_fixed.load(spec)
    endpoint = lava_fixed._server.endpoint
    with pytest.raises(Busy) as info:
        RemoteBackend(endpoint, connect_timeout_s=30)
    message = str(info.value)
    assert message.startswith("device server busy: the device is held by session ")
    assert f"pid {os.getpid()}'" in message and "holding a 8-12-3, T=10 network" in message
    assert "try again then, or use another server" in message
    # a killed client never closes its slot (a user's kill -9 locked the device for 600 s,
    # its own restart included): the way out is named
    assert message.endswith("restarting the server frees it at once (a shorter "
                            "--session-idle-s frees such slots sooner)")  # fmt: skip
    counts = lava_fixed.evaluate({}, (np.random.default_rng(0).random((2, 10, 8)) < 0.5) * 1.0)
    assert counts.shape == (1, 2, 3)  # the holder is undisturbed


def test_a_killed_lava_server_leaves_its_port_free() -> None:
    """Lava's workers fork after the server bound its port and inherited the listening
    socket: after a kill -9 of the server they held the port ("Address already in use" on
    restart, a lab admin's finding). Forked children now close it."""
    import socket
    import time

    from devices.remote import RemoteBackend
    from devices.spawn import start_server_process

    env = _lava_env()
    server = start_server_process(
        "lava-fixed", python=str(venv_python(env)), cwd=str(Path(__file__).resolve().parents[1]),
        startup_timeout_s=180, exit_on_close=False,
    )  # fmt: skip
    remote = RemoteBackend(server.endpoint, timeout_s=300)
    workers: list[int] = []
    try:
        spec = NetworkSpec.random([6, 8, 3], 10, seed=0)
        remote.load(spec)
        x = (np.random.default_rng(0).random((4, 10, 6)) < 0.4).astype(np.uint8)
        assert remote.evaluate({}, x).shape == (1, 4, 3)  # the workers are forked by now
        workers = _descendants(server.process.pid)
        assert workers, "the Lava server forked no worker: the test would prove nothing"
        server.process.kill()
        server.process.wait(10)
        port = int(server.endpoint.rsplit(":", 1)[1])
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # a worker may take a moment to notice its parent is gone; none may listen
            try:
                probe.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} still held after a kill -9"
                time.sleep(0.2)
        probe.close()
    finally:
        remote._client.close()
        server.stop()
        for pid in workers:  # orphans of the kill -9: not this test's to leave behind
            with contextlib.suppress(OSError):
                os.kill(pid, 9)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (Linux /proc), children first."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_a_forked_child_closes_the_listener_it_inherited() -> None:
    """The descriptor-level rule, in one process: the listener on the port is closed, any
    other socket is left alone."""
    import socket

    from devices.server import close_inherited_listener

    mine, other = socket.socket(), socket.socket()
    for sock in (mine, other):
        sock.bind(("127.0.0.1", 0))
        sock.listen()
    port = mine.getsockname()[1]
    assert close_inherited_listener(port) == 1
    with pytest.raises(OSError):
        mine.getsockname()
    mine.detach()  # its descriptor is closed already
    assert other.getsockname()[1] > 0
    other.close()
