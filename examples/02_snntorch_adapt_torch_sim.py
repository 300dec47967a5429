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

from digits_args import digits_parser, parse
from snntorch_digits import (
    adapt_and_score,
    digits_adaptation,
    digits_spikes,
    print_table,
    train_offline,
)

from devices.registry import open_backend
from polystep_neuro.run.data import InputShift
from polystep_neuro.run.interop import from_snntorch

SHIFT = InputShift(gain=0.5, dead_fraction=0.2, seed=1)  # the sensor's drift


def parse_args() -> argparse.Namespace:
    p = digits_parser(
        __doc__.split("\n\n")[0],
        "parameters to adapt (default: fc1.bias; names: fc<i>.weight, fc<i>.bias, "
        "lif<i>.vth, lif<i>.v_bias, lif<i>.du, lif<i>.dv)",
    )
    p.add_argument("--torch-device", default="cpu", help="where torch-sim runs: cpu or cuda")
    return parse(p, small_steps=30)


def main() -> None:
    args = parse_args()
    data = digits_spikes(args.time_steps, SHIFT, args.seed)
    print(
        f"digits: {len(data.split.y_train)} train / {len(data.split.y_test)} test samples, "
        f"rate-coded over {args.time_steps} steps; input shift: {SHIFT.describe()}"
    )

    # 1. offline training in snnTorch
    model, acc_snntorch = train_offline(args, data)

    # 2. convert; on torch-sim (float32) the spec computes what snnTorch computes
    spec = from_snntorch(model, args.time_steps, writable=args.writable)
    backend = open_backend("torch-sim", device=args.torch_device)
    backend.load(spec)

    # 3. PolyStep over the writable parameters, forward passes only (see snntorch_digits.py)
    try:
        adaptation = digits_adaptation(spec, backend, data, args)
        scores = adapt_and_score(adaptation, args.steps, "torch-sim")
    finally:
        backend.close()

    # 4. report
    print_table(acc_snntorch, scores, "torch-sim")
    scores.pop("adapted_spec")
    print("summary: " + json.dumps({"snntorch_clean": acc_snntorch, **scores}))


if __name__ == "__main__":
    main()
