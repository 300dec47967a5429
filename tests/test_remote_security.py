"""CurveZMQ: keygen, key-checked servers (loopback clients included), clear client errors,
and that a loopback-only server is unreachable from another network namespace."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from devices.registry import open_backend
from devices.remote import RemoteBackend
from devices.security import KEYS_ENV, client_keys, generate_keys, is_local_endpoint
from devices.spawn import ServerProcess
from devices.torch_sim import TorchSimBackend
from polystep_neuro.cli import main as cli_main
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec
from tests._servers import ROOT, ThreadServer, spawn

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

QUICK = {"connect_timeout_s": 0.4, "timeout_s": 0.4, "retries": 2}


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder)
    return folder


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another keygen's folder: a client key and a server key nobody authorised."""
    folder = tmp_path_factory.mktemp("stranger")
    generate_keys(folder)
    return folder


@pytest.fixture(scope="module")
def server(keys: Path) -> Iterator[ServerProcess]:
    """`python -m devices.server --curve-keys DIR` on loopback (the CLI path)."""
    proc = spawn("torch-sim", extra_args=["--curve-keys", str(keys)])
    yield proc
    proc.stop()


def _spec() -> NetworkSpec:
    return NetworkSpec.random([8, 12, 3], 10, seed=4, writable=("fc0.weight",))


def _data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    params = {"fc0.weight": rng.normal(0, 0.8, size=(5, 12, 8)).astype(np.float32)}
    inputs = (rng.random((4, 10, 8)) < 0.5).astype(np.float32)
    return params, inputs


def _unanswered(endpoint: str, **kw: object) -> str:
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable) as info:
        RemoteBackend(endpoint, **{**QUICK, **kw})  # type: ignore[arg-type]
    assert time.monotonic() - start < 5.0
    return str(info.value)


# ----------------------------------------------------------------------- keygen
def test_keygen_command_writes_private_keys(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "k"
    assert cli_main(["devices", "keygen", str(folder)]) == 0
    assert "--curve-keys" in capsys.readouterr().out
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    authorized = (folder / "authorized_clients" / "client.key").read_text()
    assert authorized == (folder / "client.key").read_text()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no staging
    before = client_keys(folder).server
    assert cli_main(["devices", "keygen", str(folder)]) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert cli_main(["devices", "keygen", str(folder), "--force"]) == 0
    assert client_keys(folder).server != before


def test_a_client_made_keypair_joins_a_server_without_its_secret_travelling(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    """keygen --client-only: the user's own pair; only client.key goes to the admin (into
    authorized_clients/ under a name of its own) and only server.key comes back."""
    admin, mine = tmp_path / "admin", tmp_path / "mine"
    generate_keys(admin)
    assert cli_main(["devices", "keygen", "--client-only", str(mine)]) == 0
    out = capsys.readouterr().out
    assert "send " + str(mine / "client.key") + " (public) to the server's admin" in out
    assert "under a name of its own (e.g. mine.key)" in out
    assert sorted(p.name for p in mine.iterdir()) == ["client.key", "client.key_secret"]
    assert stat.S_IMODE((mine / "client.key_secret").stat().st_mode) == 0o600
    with pytest.raises(DeviceError, match="get the server's server.key from whoever runs"):
        client_keys(mine)
    shutil.copy(mine / "client.key", admin / "authorized_clients" / "alice.key")
    shutil.copy(admin / "server.key", mine / "server.key")
    with caplog.at_level(logging.INFO, logger="devices.sessions"):
        with ThreadServer(curve_keys=admin) as server:
            remote = RemoteBackend(server.endpoint, curve_keys=mine, timeout_s=10)
            try:
                assert remote.capabilities.precision == "float32"
            finally:
                remote.close()
    # the log names the key file it was admitted with (students may share a user and host)
    assert "at 127.0.0.1, key alice.key (1 open)" in caplog.text


# ----------------------------------------------------------------------- key checks
def test_right_key_works(server: ServerProcess, keys: Path) -> None:
    params, inputs = _data()
    local = TorchSimBackend(device="cpu")
    local.load(_spec())
    expected = local.evaluate(params, inputs).numpy()
    assert expected.sum() > 0
    with RemoteBackend(server.endpoint, curve_keys=keys, timeout_s=20) as remote:
        remote.load(_spec())
        np.testing.assert_array_equal(remote.evaluate(params, inputs), expected)
    loaded = client_keys(keys)
    as_mapping = {
        "public_key": loaded.public.decode(),
        "secret_key": loaded.secret.decode(),
        "server_key": loaded.server.decode(),
    }
    with RemoteBackend(server.endpoint, curve_keys=as_mapping) as remote:
        assert remote.ping() < 5


def test_environment_variable_supplies_keys(
    server: ServerProcess, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEYS_ENV, str(keys))  # how `polystep-neuro adapt --backend tcp://` gets keys
    with open_backend(server.endpoint, connect_timeout_s=5) as remote:
        assert remote.capabilities.name == "torch-sim"
    # RemoteBackend itself ignores it: a private keyless loopback server stays reachable
    with ThreadServer("torch-sim") as plain, RemoteBackend(plain.endpoint) as remote:
        assert remote.keys is None and remote.ping() < 5


def test_loopback_client_without_keys_gets_no_answer(server: ServerProcess) -> None:
    message = _unanswered(server.endpoint)
    assert "requires CurveZMQ keys and this client has none" in message
    assert "curve_keys=DIR" in message and KEYS_ENV in message


def test_unknown_client_key_is_rejected(server: ServerProcess, keys: Path, stranger: Path) -> None:
    other = client_keys(stranger)
    mine = client_keys(keys)
    impostor = {"public_key": other.public, "secret_key": other.secret, "server_key": mine.server}
    message = _unanswered(server.endpoint, curve_keys=impostor)
    assert "the server rejected this client's CurveZMQ key" in message
    assert "refused the connection" in message  # at once: no retry can fix a refused key
    assert "authorized_clients" in message
    deadline = time.monotonic() + 5
    while "rejected a CurveZMQ client" not in server.stderr_tail():
        assert time.monotonic() < deadline, server.stderr_tail()
        time.sleep(0.05)
    assert other.public.decode() in server.stderr_tail()  # the operator sees which key


def test_wrong_server_key_gets_no_answer(server: ServerProcess, keys: Path, stranger: Path) -> None:
    mine, other = client_keys(keys), client_keys(stranger)
    pinned_elsewhere = {
        "public_key": mine.public,
        "secret_key": mine.secret,
        "server_key": other.server,
    }
    message = _unanswered(server.endpoint, curve_keys=pinned_elsewhere)
    assert "does not match the server's secret key" in message
    # with the default patience it is a refusal at once, not three tries of 10 s each
    start = time.monotonic()
    with pytest.raises(DeviceUnavailable, match="refused the connection .* does not match"):
        RemoteBackend(server.endpoint, curve_keys=pinned_elsewhere, connect_timeout_s=10.0)
    assert time.monotonic() - start < 5.0


def test_keyed_client_to_plain_server_is_told_why(keys: Path) -> None:
    with ThreadServer("torch-sim") as plain:
        message = _unanswered(plain.endpoint, curve_keys=keys)
    assert "handshake failed" in message and "--curve-keys" in message


@pytest.mark.parametrize("case", ["missing", "nobody-authorized"])
def test_server_refuses_to_start_with_bad_keys(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "keys"
    expected = "no server secret key at"
    if case == "nobody-authorized":
        generate_keys(folder)
        (folder / "authorized_clients" / "client.key").unlink()
        expected = "holds no client public keys"
    cmd = [sys.executable, "-m", "devices.server", "--backend", "torch-sim"]
    cmd += ["--bind", "tcp://0.0.0.0:0", "--curve-keys", str(folder)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert expected in result.stderr and "devices keygen" in result.stderr


def test_public_bind_message_names_keygen() -> None:
    from devices.security import PUBLIC_BIND_MESSAGE, check_bind

    with pytest.raises(DeviceError, match="refusing to bind tcp://0.0.0.0:1"):
        check_bind("tcp://0.0.0.0:1", insecure=False)
    assert "--curve-keys DIR" in PUBLIC_BIND_MESSAGE and "devices keygen" in PUBLIC_BIND_MESSAGE
    check_bind("tcp://0.0.0.0:1", insecure=False, curve_keys="keys")  # keys: allowed


# ----------------------------------------------------------------------- network namespace
_PROBE = r"""
import json, socket, sys
from devices.remote import RemoteBackend
from polystep_neuro.core.errors import DeviceUnavailable
out = []
for endpoint, keys in json.loads(sys.argv[1]):
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        tcp = "connected"
    except OSError as exc:
        tcp = type(exc).__name__
    try:
        RemoteBackend(endpoint, curve_keys=keys, connect_timeout_s=1.0, retries=1).close()
        answer = "answered"
    except DeviceUnavailable as exc:
        answer = str(exc)
    out.append([tcp, answer])
print(json.dumps(out))
"""


def _try(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def netns() -> Iterator[tuple[str, str] | None]:
    """(namespace, host-side veth address) or None where namespaces cannot be made here."""
    pid = os.getpid()
    ns, host_if, ns_if = f"psn-t{pid}", f"psnh{pid}"[:15], f"psnn{pid}"[:15]
    base = f"10.213.{(pid >> 6) & 255}.{(pid & 63) * 4}"
    host_ip = base.rsplit(".", 1)[0] + f".{(pid & 63) * 4 + 1}"
    ns_ip = base.rsplit(".", 1)[0] + f".{(pid & 63) * 4 + 2}"
    if os.geteuid() != 0 or shutil.which("ip") is None or not _try("ip", "netns", "add", ns):
        yield None
        return
    try:
        steps = [
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["ip", "link", "set", ns_if, "netns", ns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
            ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, host_ip
    finally:
        _try("ip", "link", "del", host_if)  # removes the peer too
        _try("ip", "netns", "del", ns)


def test_loopback_server_is_unreachable_from_another_host(
    server: ServerProcess, keys: Path, netns: tuple[str, str] | None
) -> None:
    port = server.endpoint.rsplit(":", 1)[1]
    assert server.endpoint.startswith("tcp://127.0.0.1:") and is_local_endpoint(server.endpoint)
    if netns is None:
        pytest.skip("no network namespaces here (needs root and iproute2): bound address checked")
    ns, host_ip = netns
    # positive control: the same keys through the same veth reach a server bound to it
    # (a non-loopback bind, accepted without --insecure because it has keys)
    with ThreadServer("torch-sim", bind=f"tcp://{host_ip}:0", curve_keys=keys) as public:
        probes = [
            (f"tcp://{host_ip}:{port}", str(keys)),  # the loopback server, via the veth
            (f"tcp://127.0.0.1:{port}", str(keys)),  # the namespace's own loopback
            (public.endpoint, None),
            (public.endpoint, str(keys)),
        ]
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE, json.dumps(probes)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert result.returncode == 0, result.stderr
    via_veth, own_loopback, control_no_keys, control = json.loads(result.stdout)
    assert via_veth[0] == "ConnectionRefusedError" and "did not answer" in via_veth[1]
    assert own_loopback[0] == "ConnectionRefusedError" and "did not answer" in own_loopback[1]
    assert control == ["connected", "answered"]
    assert control_no_keys[0] == "connected"
    assert "requires CurveZMQ keys" in control_no_keys[1]
