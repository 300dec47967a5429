"""A remote device: start a device server, connect to it as a backend, adapt, shut it down.

The optimiser never needs the device in its own process.  A device server
(``python -m devices.server``) hosts a backend next to the device and answers ``load`` and
``evaluate`` over ZeroMQ; the host opens it with ``open_backend("tcp://HOST:PORT")`` and the
adaptation loop runs unchanged.  Here the server hosts ``torch-sim-fixed`` (Loihi 2 fixed
point) on this machine, exactly as you would start it on a lab machine or on Intel's Loihi 2
cloud host (see docs/loihi2.md for ssh tunnels and CurveZMQ keys).

What it shows:

1. start ``python -m devices.server --backend torch-sim-fixed --bind tcp://127.0.0.1:PORT``
   as a child process and read the endpoint from its one startup line;
2. ``open_backend("tcp://127.0.0.1:PORT")``: capabilities, a ping, ``load`` (the server
   returns the network calibrated to fixed point);
3. adapt the readout weights and neuron biases of a 64 -> hidden -> 10 network on digits
   through the wire, forward passes only: the readout starts random, so the network learns
   it on the device;
4. close the connection and stop the server with SIGTERM (what Ctrl-C does), which exits 0.

Run (about a minute on a laptop CPU)::

    python examples/04_remote_device.py                   # a free port chosen by the OS
    python examples/04_remote_device.py --port 5555       # a fixed port
    python examples/04_remote_device.py --spec net.npz    # your own 64-input 10-output network
    python examples/04_remote_device.py --small           # seconds, for tests

The last line of output is a JSON summary (``summary: {...}``) for scripts.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from devices.readout import with_readout
from devices.registry import open_backend
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.controller import Adapter
from polystep_neuro.run.data import SpikeDataset, load_digits_split, rate_encode
from polystep_neuro.run.optimizers import Settings

ROOT = Path(__file__).resolve().parents[1]
WRITABLE = ("fc1.weight", "lif1.v_bias")  # writable on every fixed-point device (Loihi 2 too)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny sizes: runs in seconds (tests)")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument(
        "--backend",
        default="torch-sim-fixed",
        help="what the server hosts: torch-sim, torch-sim-fixed (lava, lava-fixed: start the "
        "server with the Lava env's python instead, see docs/backends.md)",
    )
    p.add_argument(
        "--spec",
        type=Path,
        help="adapt this NetworkSpec .npz (64 inputs, 10 classes; "
        "what `polystep-neuro deploy` writes)",
    )
    p.add_argument("--hidden", type=int, default=128, help="hidden neurons (no --spec)")
    p.add_argument(
        "--time-steps", type=int, default=16, help="T: time steps per sample (no --spec)"
    )
    p.add_argument("--steps", type=int, default=300, help="PolyStep steps")
    p.add_argument("--rank", type=int, default=64, help="PolyStep subspace rank per tensor")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()
    if args.small:
        args.hidden, args.steps, args.rank, args.batch_size = 64, 25, 16, 64
    return args


def start_server(backend: str, port: int) -> tuple[subprocess.Popen[str], str]:
    """``python -m devices.server`` as a child; returns it and the endpoint it announced.

    Once ready the server prints exactly one line to stdout,
    ``polystep-neuro device server: backend=NAME listening on tcp://127.0.0.1:PORT``;
    with port 0 that line is the only way to learn the port.  A server that cannot start
    prints ``polystep-neuro device server: error: ...`` on stderr and exits 2.
    """
    cmd = [sys.executable, "-m", "devices.server", "--backend", backend, "--device", "cpu"]
    cmd += ["--bind", f"tcp://127.0.0.1:{port}"]
    print("$ " + " ".join(["python", *cmd[1:]]))
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline().strip()  # "" if the server exited (its error is on stderr)
    if " listening on " not in line:
        server.wait()
        sys.exit(f"the device server did not start (exit code {server.returncode})")
    print(line)
    return server, line.rsplit(" ", 1)[1]


def make_spec(args: argparse.Namespace) -> NetworkSpec:
    if args.spec is not None:
        spec = NetworkSpec.load(args.spec)
        return spec if spec.writable else spec.with_writable(WRITABLE)
    # A fixed random hidden layer and a random readout, in the device's semantics
    # (delay 1, reset to zero: NetworkSpec.random's defaults).
    return NetworkSpec.random(
        [64, args.hidden, 10],
        args.time_steps,
        seed=args.seed,
        dv=0.1,
        weight_gain=1.0,
        writable=WRITABLE,
    )


def adapt(args: argparse.Namespace, endpoint: str) -> dict[str, float | int]:
    # The remote backend: the same contract as an in-process one.
    # with_readout: a network `deploy` wrote may count each class over several output
    # neurons; the device runs them as neurons of their own and the host sums them.
    backend = with_readout(open_backend(endpoint, timeout_s=60))
    try:
        caps = backend.capabilities
        print(
            f"connected: {caps.name}, precision {caps.precision}, {caps.device}; "
            f"ping {backend.ping() * 1e3:.1f} ms"
        )
        spec = make_spec(args)
        backend.load(spec)  # the server calibrates to Loihi 2 fixed point and sends it back
        deployed = backend.spec
        print(
            f"loaded {'-'.join(map(str, deployed.sizes))} network, T={deployed.num_steps}; "
            f"writable: {', '.join(deployed.writable)}"
        )

        split = load_digits_split(args.seed)
        t = deployed.num_steps
        cut = int(0.8 * len(split.y_train))  # the rest validates: it decides what is kept
        x, y = rate_encode(split.x_train, t), split.y_train
        train = SpikeDataset(x[:cut], y[:cut], args.batch_size, seed=args.seed)
        validation = SpikeDataset(x[cut:], y[cut:], args.batch_size)
        test = SpikeDataset(rate_encode(split.x_test, t), split.y_test, args.batch_size)

        # The recipe: probe sizes from each tensor's magnitude and the device's resolution;
        # PolyStep's step grows while successive moves agree (learning a readout from a
        # random start) and stays small when they do not (fine-tuning a trained network).
        adapter = Adapter.build(
            backend,
            train,
            steps=args.steps,
            settings=Settings(rank=args.rank, seed=args.seed),
            validation={"validation": validation},
            test={"test": test},
            eval_every=25,
            progress=not args.no_progress,
        )
        print(
            f"{adapter.optimizer.num_candidates} candidates x {args.batch_size} samples per "
            "step go over the wire"
        )
        result = adapter.run(args.steps)
        before, after = result.start["test_accuracy"], result.end["test_accuracy"]
        print(
            f"test accuracy {before:.1%} -> {after:.1%} in {result.steps} steps "
            f"({result.evaluations:,} forward passes on the server, "
            f"{result.wall_seconds:.0f} s)"
        )
        return {
            "before": before,
            "after": after,
            "steps": result.steps,
            "evaluations": result.evaluations,
        }
    finally:
        backend.close()  # the server frees its backend and keeps serving


def main() -> None:
    args = parse_args()
    server, endpoint = start_server(args.backend, args.port)
    try:
        summary = adapt(args, endpoint)
    finally:
        # SIGTERM (or Ctrl-C) stops the server cleanly: it finishes the request in hand,
        # closes its backend and socket, and exits 0.
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        print(f"server stopped (exit code {code})")
    summary["server_exit_code"] = code
    print("summary: " + json.dumps(summary))


if __name__ == "__main__":
    main()
