"""A device server restarted while a client's evaluate waits: how long until that evaluate
returns, with the client's session pings and without them, side by side in one run.

    python -m polystep_neuro.bench.server_restart [--timeout 60] [--ping 10]

One torch-sim server process (CPU) holds a 64-512-10 network (T=50); the client evaluates
64 parameter sets on 256 samples (a few seconds on one core).  A second evaluate is sent,
the server is killed a third of an evaluate later and started again on the same port.
Without pings the lost evaluate is noticed when its try times out (``--timeout``); with
them, the first ping after the restart gets "no such session" and the client re-loads and
evaluates again.  Both must return the counts of an undisturbed evaluate.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import numpy as np

from devices.remote import RemoteBackend
from devices.spawn import ServerProcess, start_server_process
from polystep_neuro.core.network import NetworkSpec


def _spawn(bind: str = "tcp://127.0.0.1:0") -> ServerProcess:
    return start_server_process(
        "torch-sim", bind=bind, extra_args=["--device", "cpu"], startup_timeout_s=120
    )


def _work() -> tuple[NetworkSpec, dict[str, np.ndarray], np.ndarray]:
    spec = NetworkSpec.random([64, 512, 10], 50, seed=0, writable=("fc0.weight",))
    rng = np.random.default_rng(0)
    weight = spec.parameters()["fc0.weight"]
    params = {"fc0.weight": (weight + 0.1 * rng.standard_normal((64, *weight.shape))).astype("f4")}
    return spec, params, (rng.random((256, 50, 64)) < 0.2).astype(np.uint8)


def across_restart(pings: bool, timeout_s: float, ping_s: float) -> dict[str, Any]:
    """Seconds from sending an evaluate to its counts, the server restarted meanwhile."""
    spec, params, inputs = _work()
    servers = [_spawn()]
    remote = RemoteBackend(
        servers[0].endpoint, timeout_s=timeout_s, connect_timeout_s=ping_s, retries=3
    )
    if not pings:  # the client as it was: nothing checks on a request while it waits
        remote._session_probe = lambda session: None  # type: ignore[method-assign]
    try:
        remote.load(spec)
        start = time.monotonic()
        expected = remote.evaluate(params, inputs)
        one = time.monotonic() - start

        def restart() -> None:
            time.sleep(one / 3)
            servers[0].process.kill()
            servers[0].process.wait(10)
            servers.append(_spawn(servers[0].endpoint))

        start = time.monotonic()
        killer = threading.Thread(target=restart)
        killer.start()
        counts = remote.evaluate(params, inputs)
        took = time.monotonic() - start
        killer.join(120)
    finally:
        remote.close()
        for server in servers:
            server.stop()
    return {"one_s": one, "across_s": took, "same": bool(np.array_equal(counts, expected))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="the client's timeout_s")
    parser.add_argument("--ping", type=float, default=10.0, help="connect_timeout_s: the ping")
    args = parser.parse_args(argv)
    rows = {
        name: across_restart(pings, args.timeout, args.ping)
        for name, pings in (("without pings", False), ("with pings", True))
    }
    print(f"client timeout_s {args.timeout:g} s, ping every {args.ping:g} s")
    print("| client | one evaluate (s) | evaluate across the restart (s) | counts equal |")
    print("|---|---:|---:|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['one_s']:.1f} | {row['across_s']:.1f} | {row['same']} |")
    ratio = rows["without pings"]["across_s"] / rows["with pings"]["across_s"]
    print(f"without / with: {ratio:.1f}x")
    return 0 if all(r["same"] for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
