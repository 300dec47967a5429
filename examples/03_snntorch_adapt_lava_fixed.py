"""Example 02 on Lava: deploy an snnTorch model to Lava's bit-accurate Loihi 2 models
(``lava-fixed``), shift its input, and adapt it there with forward passes only.

What it shows, beyond example 02:

1. an snnTorch model computes with snnTorch's timing (a layer acts in the same step);
   Loihi 2 and Lava deliver each layer's output one step later.  ``device_compatibility``
   lists what differs and ``to_device_semantics`` makes the device's version, saying what
   it changed;
2. ``fixed_point.calibrate`` picks the Loihi 2 integer formats (the quantisation);
3. the ``lava-fixed`` backend runs the network as real Lava processes (``fixed_pt``
   models) in a device server inside the Lava venv, and PolyStep adapts the output
   neurons' biases there (Lava folds ``fc1.bias`` into the neuron bias, which it rewrites
   between runs; thresholds and decays are fixed once the network is built);
4. ``torch-sim-fixed`` gives bit-identical spike counts for the adapted network, which is
   why you can adapt on a GPU and deploy the result to Lava or the chip.

Needs the Lava venv (Python 3.10 with lava-nc 0.10.0)::

    polystep-neuro devices setup-lava      # once, a few minutes; see docs/lava-env.md

Run (a few minutes on a laptop CPU: Lava simulates far slower than torch-sim)::

    python examples/03_snntorch_adapt_lava_fixed.py
    python examples/03_snntorch_adapt_lava_fixed.py --writable fc1.weight fc1.bias
    python examples/03_snntorch_adapt_lava_fixed.py --small      # for tests

Writable on lava-fixed: ``fc<i>.weight``, ``fc<i>.bias``, ``lif<i>.v_bias``.  Lava computes
the layers before the first adapted one once for all parameter sets, so adapting the
readout is much cheaper there than adapting the first layer.

Without the Lava venv it prints how to create it and exits with code 2.  The last line of
output is a JSON summary (``summary: {...}``) for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from digits_args import digits_parser, parse

from devices.base import BaseBackend
from devices.registry import open_backend
from polystep_neuro.core.errors import DeviceUnavailable


def parse_args() -> argparse.Namespace:
    p = digits_parser(
        __doc__.split("\n\n")[0],
        "parameters to adapt (default: fc1.bias, which the device semantics fold into "
        "lif1.v_bias, the name the run then prints; lava-fixed can write fc<i>.weight, "
        "fc<i>.bias and lif<i>.v_bias)",
    )
    return parse(p, small_steps=20)


def main() -> None:
    args = parse_args()
    # Open the device first, so that a missing Lava venv is reported before any training.
    try:
        lava = open_backend("lava-fixed")  # spawns the device server in the Lava venv
    except DeviceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "This example needs the Lava venv (Python 3.10 + lava-nc 0.10.0). Create it with\n"
            "    polystep-neuro devices setup-lava\n"
            "(see docs/lava-env.md), then run the example again.",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        summary = run(args, lava)
    finally:
        lava.close()  # stops the server and its Lava processes
    print("summary: " + json.dumps(summary))


def run(args: argparse.Namespace, lava: BaseBackend) -> dict[str, Any]:
    # torch and snnTorch are imported here, after the Lava check
    import numpy as np
    import torch
    from snntorch_digits import (
        adapt_and_score,
        digits_adaptation,
        digits_spikes,
        print_table,
        train_offline,
    )

    from polystep_neuro.run.data import InputShift
    from polystep_neuro.run.interop import device_compatibility, from_snntorch, to_device_semantics
    from simulators import fixed_point

    shift = InputShift(gain=0.5, dead_fraction=0.2, seed=1)  # the sensor's drift
    print(f"device: {lava.capabilities.device}")
    data = digits_spikes(args.time_steps, shift, args.seed)
    y_train, y_test = data.split.y_train, data.split.y_test
    print(
        f"digits: {len(y_train)} train / {len(y_test)} test samples, rate-coded over "
        f"{args.time_steps} steps; input shift: {shift.describe()}"
    )

    # 1. offline training in snnTorch
    model, acc_snntorch = train_offline(args, data)

    # 2. to the device's semantics, then to Loihi 2 fixed point
    spec = from_snntorch(model, args.time_steps, writable=args.writable)
    for problem in device_compatibility(spec):
        print(f"  differs on the device: {problem}")
    on_device, changes = to_device_semantics(spec)
    for change in changes:
        print(f"  changed for the device: {change}")
    deployed = fixed_point.calibrate(on_device)
    lava.load(deployed)

    # 3. adapt on lava-fixed, exactly as on torch-sim in example 02
    adaptation = digits_adaptation(deployed, lava, data, args)
    scores = adapt_and_score(adaptation, args.steps, "lava-fixed")
    shifted_test = adaptation.shifted_test

    # 4. the adapted network on torch-sim-fixed: the same spike counts, bit for bit
    adapted = scores.pop("adapted_spec")
    lava.load(adapted)
    lava_counts = np.asarray(lava.evaluate({}, shifted_test.spikes))
    sim = open_backend("torch-sim-fixed", device="cpu")
    sim.load(adapted)
    sim_counts = torch.as_tensor(sim.evaluate({}, shifted_test.spikes)).cpu().numpy()
    sim.close()
    identical = bool(np.array_equal(lava_counts, sim_counts))
    print(f"adapted network on torch-sim-fixed: spike counts identical to lava-fixed: {identical}")

    print_table(acc_snntorch, scores, "lava-fixed")
    return {"snntorch_clean": acc_snntorch, **scores, "torch_sim_fixed_identical": identical}


if __name__ == "__main__":
    main()
