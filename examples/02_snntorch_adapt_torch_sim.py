"""Adapt an snnTorch-trained network to a shifted input, forward passes only, on torch-sim.

What it shows:

1. train a tiny snnTorch model (64 -> hidden -> 10, ``snn.Leaky``) on scikit-learn's bundled
   digits with ordinary BPTT, the way you would before deployment;
2. convert it with ``from_snntorch``: the spec computes exactly what snnTorch computes, so
   the float ``torch-sim`` backend scores it exactly as snnTorch does;
3. shift the input as a deployed sensor might drift (half the gain, a fifth of the pixels
   dead) and measure the drop;
4. adapt only the output neurons' biases (``fc1.bias``: 10 numbers, which a Loihi 2
   deployment can rewrite at run time) with PolyStep through the device contract, forward
   passes only (no gradients, no snnTorch), on a stream of clean and shifted samples so
   that clean accuracy holds;
5. print accuracies before and after.

Run (under a minute on a laptop CPU; no download)::

    pip install -e ".[dev]"          # snntorch is in the dev (or [snntorch]) extra
    python examples/02_snntorch_adapt_torch_sim.py
    python examples/02_snntorch_adapt_torch_sim.py --writable fc1.weight fc1.bias  # more
    python examples/02_snntorch_adapt_torch_sim.py --small      # seconds, for tests

The last line of output is a JSON summary (``summary: {...}``) for scripts.
"""

from __future__ import annotations

import argparse
import json

from snntorch_digits import digits_spikes, make_model, snntorch_accuracy, train_bptt

from devices.registry import open_backend
from polystep_neuro.controller import Adapter
from polystep_neuro.data import InputShift, SpikeDataset, concat
from polystep_neuro.interop import from_snntorch
from polystep_neuro.losses import make_loss
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.params import ParamVector

SHIFT = InputShift(gain=0.5, dead_fraction=0.2, seed=1)  # the sensor's drift


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny sizes: runs in seconds (tests)")
    p.add_argument("--hidden", type=int, default=64, help="hidden LIF neurons")
    p.add_argument("--num-steps", type=int, default=16, help="time steps per sample")
    p.add_argument("--epochs", type=int, default=4, help="snnTorch BPTT epochs")
    p.add_argument(
        "--writable",
        nargs="+",
        default=["fc1.bias"],
        help="parameters to adapt (default: fc1.bias; names: fc<i>.weight, fc<i>.bias, "
        "lif<i>.vth, lif<i>.v_bias, lif<i>.du, lif<i>.dv)",
    )
    p.add_argument("--steps", type=int, default=80, help="PolyStep adaptation steps")
    p.add_argument("--rank", type=int, default=16, help="PolyStep subspace rank per tensor")
    p.add_argument("--batch-size", type=int, default=128, help="samples per adaptation step")
    p.add_argument("--device", default="cpu", help="where torch-sim runs: cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args()
    if args.small:
        args.hidden, args.epochs, args.steps, args.batch_size = 32, 2, 30, 64
    return args


def main() -> None:
    args = parse_args()
    data = digits_spikes(args.num_steps, SHIFT, args.seed)
    y_train, y_test = data.split.y_train, data.split.y_test
    print(
        f"digits: {len(y_train)} train / {len(y_test)} test samples, rate-coded over "
        f"{args.num_steps} steps; input shift: {SHIFT.describe()}"
    )

    # 1. offline training in snnTorch (gradients are fine here: this is not the device)
    model = make_model(args.hidden, seed=args.seed)
    seconds = train_bptt(model, data.train, y_train, epochs=args.epochs, seed=args.seed)
    acc_snntorch = snntorch_accuracy(model, data.test, y_test)
    print(
        f"snnTorch 64-{args.hidden}-10, {args.epochs} BPTT epochs ({seconds:.0f} s): "
        f"test accuracy {acc_snntorch:.1%}"
    )

    # 2. convert; on torch-sim (float32) the spec computes what snnTorch computes
    spec = from_snntorch(model, args.num_steps, writable=args.writable)
    backend = open_backend("torch-sim", device=args.device)
    backend.load(spec)
    test = SpikeDataset(data.test, y_test, len(y_test))
    shifted_test = SpikeDataset(data.shifted_test, y_test, len(y_test))

    # 3. PolyStep over the writable parameters.  scaling="auto" measures every tensor in
    #    units of its typical size (biases: 5 % of the threshold), so one step radius fits
    #    all; a tensor larger than ``rank`` is searched in a random subspace of that rank.
    layout = ParamVector(spec, scaling="auto")
    optimizer = PolyStep(
        layout.flatten(spec),
        step_radius=0.3,
        probe_radius=0.6,
        epsilon=0.3,
        subspace=Subspace(sizes=layout.sizes, rank=args.rank, absorb_interval=20),
        seed=args.seed,
    )
    mixed = concat(  # clean and shifted samples, so that clean accuracy holds
        SpikeDataset(data.train, y_train, args.batch_size),
        SpikeDataset(data.shifted_train, y_train, args.batch_size),
        args.batch_size,
        args.seed,
    )
    adapter = Adapter(
        spec,
        backend,
        optimizer,
        make_loss("ce", args.num_steps, scale=0.5),
        mixed,
        monitor=shifted_test,
        eval_every=20,
        progress=not args.no_progress,
        layout=layout,
    )
    before_clean = adapter.evaluate_current(test)["monitor_accuracy"]
    before_shifted = adapter.evaluate_current(shifted_test)["monitor_accuracy"]
    print(f"torch-sim, converted: clean {before_clean:.1%}, shifted {before_shifted:.1%}")
    print(
        f"adapting {', '.join(layout.names)} ({layout.dim} values) on torch-sim: "
        f"{optimizer.num_candidates} candidates x {args.batch_size} samples per step"
    )

    # 4. the hardware-in-the-loop loop: ask -> forward passes on the device -> loss -> tell
    result = adapter.run(args.steps)
    after_clean = adapter.evaluate_current(test)["monitor_accuracy"]
    after_shifted = adapter.evaluate_current(shifted_test)["monitor_accuracy"]
    backend.close()

    # 5. report
    print(
        f"{result.steps} steps, {result.evaluations:,} forward passes, {result.wall_seconds:.0f} s"
    )
    print("| network | clean test | shifted test |")
    print("|---|---|---|")
    print(f"| snnTorch model | {acc_snntorch:.1%} | |")
    print(f"| converted, before adaptation | {before_clean:.1%} | {before_shifted:.1%} |")
    print(f"| adapted on torch-sim | {after_clean:.1%} | {after_shifted:.1%} |")
    summary = {
        "snntorch_clean": acc_snntorch,
        "before_clean": before_clean,
        "before_shifted": before_shifted,
        "after_clean": after_clean,
        "after_shifted": after_shifted,
        "steps": result.steps,
        "evaluations": result.evaluations,
    }
    print("summary: " + json.dumps(summary))


if __name__ == "__main__":
    main()
