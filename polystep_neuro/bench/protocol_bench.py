"""Round trip of an evaluate-sized batch: our protocol vs raw pyzmq, side by side.

    python -m polystep_neuro.bench.protocol_bench [--mb 25] [--reps 20]

Both paths move the same bytes over loopback TCP to an echo thread and back:

* protocol: encode (JSON header + zero-copy frames) -> send -> server decode (with every
  validation) -> encode the same arrays back -> send -> client decode;
* raw: the same bytes as one frame, echoed as received (copy=False both ways).

Runs alternate between the paths so machine noise hits both alike.  Goal: protocol <= 2x raw.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from devices.protocol import decode, encode


def _payload(megabytes: float) -> dict[str, np.ndarray]:
    """V float32 weight sets of a 256x384 layer plus uint8 spikes: an evaluate request."""
    per_set = 256 * 384 * 4
    num_sets = max(1, round(megabytes * 1e6 / per_set))
    rng = np.random.default_rng(0)
    return {
        "fc0.weight": rng.standard_normal((num_sets, 256, 384), dtype=np.float32),
        "inputs": (rng.random((32, 25, 256)) < 0.2).astype(np.uint8),
    }


def _echo(ctx: zmq.Context, mode: str, ready: threading.Event, out: list[str]) -> None:
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    out.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    ready.set()
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 1 and frames[0].bytes == b"stop":
            sock.send(b"bye")
            break
        if mode == "protocol":
            header, arrays = decode(frames)
            sock.send_multipart(encode({"id": header["id"], "op": "echo"}, arrays), copy=False)
        else:
            sock.send_multipart(frames, copy=False)
    sock.close()


def _server(ctx: zmq.Context, mode: str) -> tuple[zmq.Socket, threading.Thread]:
    ready, endpoint = threading.Event(), []
    thread = threading.Thread(target=_echo, args=(ctx, mode, ready, endpoint), daemon=True)
    thread.start()
    ready.wait(10)
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint[0])
    return sock, thread


def _protocol_trip(sock: zmq.Socket, arrays: dict[str, np.ndarray]) -> Callable[[], None]:
    def trip() -> None:
        sock.send_multipart(encode({"op": "evaluate", "id": 1}, arrays), copy=False)
        _, back = decode(sock.recv_multipart(copy=False), reply=True)
        assert back["fc0.weight"].shape == arrays["fc0.weight"].shape

    return trip


def _raw_trip(sock: zmq.Socket, blob: np.ndarray) -> Callable[[], None]:
    def trip() -> None:
        sock.send(blob, copy=False)
        back = sock.recv(copy=False)
        assert len(back.buffer) == blob.nbytes

    return trip


def measure(megabytes: float = 25.0, reps: int = 20) -> dict:
    """Round-trip times of both paths, alternating, after 3 uncounted warm-up trips each."""
    arrays = _payload(megabytes)
    blob = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays.values()])
    ctx = zmq.Context()
    proto_sock, proto_thread = _server(ctx, "protocol")
    raw_sock, raw_thread = _server(ctx, "raw")
    trips = {"protocol": _protocol_trip(proto_sock, arrays), "raw pyzmq": _raw_trip(raw_sock, blob)}
    times: dict[str, list[float]] = {name: [] for name in trips}
    for rep in range(reps + 3):
        for name, trip in trips.items():
            start = time.perf_counter()
            trip()
            if rep >= 3:  # warm-up trips are not counted
                times[name].append(time.perf_counter() - start)
    for sock in (proto_sock, raw_sock):
        sock.send(b"stop")
        sock.recv()
        sock.close()
    proto_thread.join(5)
    raw_thread.join(5)
    ctx.term()
    ratio = statistics.median(times["protocol"]) / statistics.median(times["raw pyzmq"])
    return {
        "size_mb": blob.nbytes / 1e6,
        "shapes": _shapes(arrays),
        "reps": reps,
        "times": times,
        "ratio": ratio,
    }


def table(result: dict) -> list[str]:
    size_mb = result["size_mb"]
    lines = [
        "| path | median ms | min ms | round-trip MB/s (median) | vs raw (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    raw = statistics.median(result["times"]["raw pyzmq"])
    for name, values in result["times"].items():
        med = statistics.median(values)
        lines.append(
            f"| {name} | {med * 1e3:.1f} | {min(values) * 1e3:.1f} | {2 * size_mb / med:.0f} "
            f"| {med / raw:.2f}x |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=25.0, help="payload size in MB")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()

    result = measure(args.mb, args.reps)
    print(f"payload: {result['size_mb']:.1f} MB per direction ({', '.join(result['shapes'])}), ")
    print(f"{args.reps} round trips per path, loopback TCP, echo thread in-process\n")
    print("\n".join(table(result)))
    print(f"\nprotocol / raw (median): {result['ratio']:.2f}x (goal <= 2x)")


def _shapes(arrays: dict[str, np.ndarray]) -> list[str]:
    return [f"{name} {a.dtype} {list(a.shape)}" for name, a in arrays.items()]


if __name__ == "__main__":
    main()
