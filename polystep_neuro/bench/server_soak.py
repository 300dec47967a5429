"""A device server many clients share, with hostile peers beside them: lost and wrong
replies, latency against a quiet spell of the same run, and the server's memory.

    python -m polystep_neuro.bench.server_soak [--minutes 10] [--calls 1000]
    python -m polystep_neuro.bench.server_soak --quick   # a smoke test: 12 s of soak

Two parts, one torch-sim-fixed server process (CPU, ``OMP_NUM_THREADS=1``):

* sessions: 8 clients, each with its own network, run ``--calls`` evaluates each, all at
  once, each checking every reply against its own network's counts computed in process;
* soak: 4 well-behaved clients evaluate for ``--minutes`` (a pause of 20 ms after each
  reply, as an adaptation loop scores its candidates), while the run alternates quiet
  windows and hostile ones.  In a hostile window a second process keeps sending random
  bytes (64 KiB a connection), half messages (a frame flagged "more" and a hang-up, a
  greeting cut off), messages without the empty envelope frame, legacy ZMTP 1.0
  greetings with a request, and reconnect storms (20 sockets that say hello and vanish).
  Latencies are compared window kind against window kind (p50 and p99), so machine
  noise hits both alike; the server's resident memory is sampled every second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

WRITABLE = ("fc0.weight", "lif1.v_bias")
SIZES = [32, 48, 10]
STEPS = 20
THINK_S = 0.02  # a client's pause between a reply and its next request


@dataclass
class Tally:
    """What the well-behaved clients saw."""

    calls: int = 0
    lost: list[str] = field(default_factory=list)  # an exception instead of a reply
    wrong: list[str] = field(default_factory=list)  # a reply with other counts
    latency: dict[str, list[float]] = field(default_factory=lambda: {"quiet": [], "hostile": []})
    lock: threading.Lock = field(default_factory=threading.Lock)


# --------------------------------------------------------------------------- the server
def _start_server() -> Any:
    from devices.spawn import start_server_process

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return start_server_process(
        "torch-sim-fixed",
        extra_args=["--device", "cpu"],
        exit_on_close=False,
        env=env,
        startup_timeout_s=180,
    )


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- clients
def _client_work(index: int, batches: int = 3) -> tuple[Any, list[tuple[dict, Any, Any]]]:
    """Client ``index``'s network and a few batches with the counts they must give."""
    from devices.torch_sim import TorchSimBackend
    from polystep_neuro.core.network import NetworkSpec

    spec = NetworkSpec.random(SIZES, STEPS, seed=100 + index, writable=WRITABLE)
    rng = np.random.default_rng(index)
    work = []
    with TorchSimBackend("loihi-fixed", "cpu") as local:
        local.load(spec)
        for _ in range(batches):
            params = {
                name: (spec.parameters()[name] + rng.normal(0, 0.3, (8, *shape))).astype(np.float32)
                for name, shape in spec.writable_shapes().items()
            }
            inputs = (rng.random((4, STEPS, SIZES[0])) < 0.3).astype(np.uint8)
            work.append((params, inputs, local.evaluate(params, inputs).numpy()))
    return spec, work


def _run_client(
    endpoint: str,
    index: int,
    tally: Tally,
    *,
    calls: int | None = None,
    seconds: float | None = None,
    phase: Any = None,
    think_s: float = 0.0,
    start: threading.Barrier | None = None,
) -> None:
    from devices.remote import RemoteBackend

    spec, work = _client_work(index)
    with RemoteBackend(endpoint, timeout_s=10, retries=1) as client:
        client.load(spec)
        client.evaluate(*work[0][:2])  # warm-up, not counted
        if start is not None:
            start.wait()
        until = None if seconds is None else time.monotonic() + seconds
        call = 0
        while (calls is None or call < calls) and (until is None or time.monotonic() < until):
            params, inputs, want = work[call % len(work)]
            kind = phase() if phase is not None else "quiet"
            began = time.perf_counter()
            try:
                got = client.evaluate(params, inputs)
            except Exception as exc:  # a lost reply: the one thing that must not happen
                with tally.lock:
                    tally.lost.append(f"client {index} call {call}: {type(exc).__name__}: {exc}")
                call += 1
                continue
            took = time.perf_counter() - began
            with tally.lock:
                tally.calls += 1
                tally.latency[kind].append(took)
                if not np.array_equal(got, want):
                    tally.wrong.append(f"client {index} call {call}")
            call += 1
            if think_s:
                time.sleep(think_s)


def _clients(endpoint: str, count: int, tally: Tally, on_start: Any = None, **kw: Any) -> float:
    """Run ``count`` clients at once (from when all have loaded); the wall time."""
    start = threading.Barrier(count + 1)
    threads = [
        threading.Thread(
            target=_run_client, args=(endpoint, i, tally), kwargs={**kw, "start": start}
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    if on_start is not None:
        on_start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


# --------------------------------------------------------------------------- hostile peers
def _hostile(endpoint: str, active: Any, stop: Any, sent: Any) -> None:
    """Runs in its own process: while ``active`` is set, every kind of bad peer in turn."""
    host, port = endpoint[len("tcp://") :].rsplit(":", 1)
    ctx = zmq.Context()
    rng = np.random.default_rng(0)
    ping = b'{"v":2,"op":"ping","id":1,"arrays":[]}'
    hello = b'{"v":2,"op":"hello","id":1,"client":"storm","arrays":[]}'

    def raw(data: bytes) -> None:
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            conn.sendall(data)

    def zsock(kind: int) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 200)
        sock.connect(endpoint)
        return sock

    def garbage() -> None:
        raw(rng.bytes(64 * 1024))

    def half_message() -> None:
        sock = zsock(zmq.DEALER)
        sock.send(b"", zmq.SNDMORE)
        sock.send(ping, zmq.SNDMORE)  # the last frame never comes
        sock.close()

    def cut_greeting() -> None:
        raw(b"\xff" + b"\x00" * 8 + b"\x7f\x03")  # a ZMTP 3 greeting, cut off

    def no_envelope() -> None:
        sock = zsock(zmq.DEALER)
        sock.send(ping)  # no empty frame; the reply is never read
        sock.close()

    def bad_json() -> None:
        sock = zsock(zmq.REQ)
        sock.send(b"{not json")
        sock.close()

    def legacy() -> None:
        raw(b"\x01\x00" + b"\x01\x01" + bytes([len(ping) + 1, 0]) + ping)

    def storm() -> None:
        socks = [zsock(zmq.REQ) for _ in range(20)]
        for sock in socks:
            sock.send(hello)
        for sock in socks:
            sock.close()

    behaviours = (garbage, half_message, cut_greeting, no_envelope, bad_json, legacy, storm)
    while not stop.is_set():
        if not active.wait(0.1):
            continue
        for behave in behaviours:
            try:
                behave()
                with sent.get_lock():
                    sent.value += 1
            except OSError:
                pass
        time.sleep(0.05)
    ctx.destroy(linger=0)


# --------------------------------------------------------------------------- the parts
def sessions_part(endpoint: str, clients: int, calls: int) -> dict[str, Any]:
    tally = Tally()
    wall = _clients(endpoint, clients, tally, calls=calls)
    return {
        "clients": clients,
        "calls": tally.calls,
        "lost": len(tally.lost),
        "wrong": len(tally.wrong),
        "wall_s": wall,
        "examples": (tally.lost + tally.wrong)[:3],
    }


def soak_part(server: Any, clients: int, seconds: float, window_s: float) -> dict[str, Any]:
    """Well-behaved clients for ``seconds``; hostile windows alternate with quiet ones."""
    spawn = mp.get_context("spawn")
    active, stop, sent = spawn.Event(), spawn.Event(), spawn.Value("l", 0)
    hostile = spawn.Process(target=_hostile, args=(server.endpoint, active, stop, sent))
    hostile.start()
    tally = Tally()
    began = time.monotonic()

    def phase() -> str:
        return "hostile" if active.is_set() else "quiet"

    rss: list[tuple[float, float]] = []
    done = threading.Event()

    def conduct() -> None:
        nonlocal began
        began = time.monotonic()
        while not done.is_set():
            now = time.monotonic()
            (active.set if int((now - began) // window_s) % 2 else active.clear)()
            if int(now - began) >= len(rss):
                rss.append((now - began, _rss_mib(server.process.pid)))
            done.wait(0.05)

    conductor = threading.Thread(target=conduct, daemon=True)
    try:
        _clients(
            server.endpoint,
            clients,
            tally,
            on_start=conductor.start,
            seconds=seconds,
            phase=phase,
            think_s=THINK_S,
        )
    finally:
        done.set()
        if conductor.ident is not None:
            conductor.join()
        stop.set()
        active.set()
        hostile.join(10)
        if hostile.is_alive():
            hostile.kill()
    return {
        "clients": clients,
        "calls": tally.calls,
        "lost": len(tally.lost),
        "wrong": len(tally.wrong),
        "examples": (tally.lost + tally.wrong)[:3],
        "quiet": tally.latency["quiet"],
        "hostile": tally.latency["hostile"],
        "hostile_actions": sent.value,
        "rss": rss,
    }


# --------------------------------------------------------------------------- report
def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def report(sessions: dict[str, Any], soak: dict[str, Any], minutes: float) -> str:
    from polystep_neuro.bench.machine import describe

    quiet, hostile = soak["quiet"], soak["hostile"]
    rows = [(q, _pct(quiet, q), _pct(hostile, q)) for q in (50, 99)]
    rss = [m for _, m in soak["rss"]]
    third = max(1, len(rss) // 3)
    first, last = max(rss[:third]), max(rss[-third:])
    lines = [
        f"- {describe(gpu=False)}; torch-sim-fixed server on CPU, OMP_NUM_THREADS=1",
        "",
        f"Sessions: {sessions['clients']} clients, each its own network, interleaved",
        "",
        "| clients | calls | lost | wrong | calls/s |",
        "|---|---|---|---|---|",
        f"| {sessions['clients']} | {sessions['calls']:,} | {sessions['lost']} | "
        f"{sessions['wrong']} | {sessions['calls'] / sessions['wall_s']:.0f} |",
        "",
        f"Soak: {minutes:g} min, {soak['clients']} clients, hostile and quiet windows "
        f"alternating ({soak['hostile_actions']:,} hostile actions)",
        "",
        "| latency | quiet (ms) | hostile (ms) | hostile / quiet |",
        "|---|---|---|---|",
        *(f"| p{q} | {a:.1f} | {b:.1f} | {b / a:.2f}x |" for q, a, b in rows),
        "",
        "| calls | lost | wrong | server RSS first third (MiB) | last third (MiB) | last / first |",
        "|---|---|---|---|---|---|",
        f"| {soak['calls']:,} | {soak['lost']} | {soak['wrong']} | {first:.0f} | {last:.0f} | "
        f"{last / first:.2f}x |",
    ]
    examples = sessions["examples"] + soak["examples"]
    if examples:
        lines += ["", "First failures: " + "; ".join(examples)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polystep_neuro.bench.server_soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--calls", type=int, default=1000, help="evaluates per session client")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 0.2 min, 20 calls")
    args = parser.parse_args(argv)
    minutes, calls, window_s = args.minutes, args.calls, 30.0
    if args.quick:
        minutes, calls, window_s = 0.2, 20, 3.0
    server = _start_server()
    try:
        sessions = sessions_part(server.endpoint, clients=8, calls=calls)
        soak = soak_part(server, clients=4, seconds=minutes * 60, window_s=window_s)
        alive = server.process.poll() is None
    finally:
        server.stop()
    print(report(sessions, soak, minutes))
    ok = alive and sessions["lost"] == sessions["wrong"] == soak["lost"] == soak["wrong"] == 0
    if not alive:
        print("the server died during the run")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
