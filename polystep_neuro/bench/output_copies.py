"""The deployment gap's ties, split: each output neuron doubled on the device, counts summed.

    python -m polystep_neuro.bench.output_copies [--seeds 0 1 2] [--models NAME ...]

On the device a neuron resets to zero in the step it spikes, so its output layer fires less
and in coarser steps than the trained model's (docs/benchmarks.md, section 11): more test
samples end with two classes on the same top count, and a tie counts as wrong.  Here every
output neuron of the network ``deploy`` hands back without its output-copies stage
(``output_copies=False``) gets copies with the same weights and their bias offset by a
fraction of the threshold (default one copy at +0.1); a class's count is the sum over its
copies, which breaks most ties.  The same network scored with and without them, every
run: where this measured the stage before ``deploy`` had it, it now isolates what the
stage adds (``deploy`` keeps it only where validation holds; this scores it always).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # `python -m polystep_neuro.bench.output_copies`
    sys.path.insert(0, str(ROOT))

from polystep_neuro.bench.deploy_bench import (  # noqa: E402
    Model,
    chosen_models,
    model_parser,
    trained,
)
from polystep_neuro.bench.gap_sources import test_counts, ties  # noqa: E402
from polystep_neuro.core.network import NetworkSpec, class_counts  # noqa: E402
from polystep_neuro.run.losses import accuracy  # noqa: E402
from polystep_neuro.run.output_copies import OFFSETS, with_output_copies  # noqa: E402


def score(spec: NetworkSpec, spikes: np.ndarray, labels: np.ndarray, copies: int) -> dict:
    """Test accuracy (a tie counts as wrong) and tie shares of a (copied) device network."""
    counts = class_counts(test_counts(spec, spikes, "loihi-fixed"), copies)
    acc = float(accuracy(counts.to(torch.float32)[None], torch.as_tensor(labels))[0])
    tied, label_tied = ties(counts, labels)
    return {"accuracy": acc, "ties": tied, "label_tied": label_tied}


def run_one(model: Model, seed: int) -> dict:
    """Deploy without the output-copies stage, then score the recovered network with and
    without copies."""
    import polystep_neuro as pn

    net, (x_train, y_train), (x_val, y_val), (x_test, y_test) = trained(model, seed)
    result = pn.deploy(
        net, "torch-sim-fixed", data=(x_train, y_train), validation=(x_val, y_val),
        test={"test": (x_test, y_test)}, time_steps=model.num_steps, time_first=True,
        seed=seed, progress=False, output_copies=False, adapt=False,
    )  # fmt: skip
    copied = with_output_copies(result.spec)
    return {
        "trained": result.reference["test_accuracy"],
        "converted": result.before["test_accuracy"],
        "recovered": score(result.spec, x_test, y_test, 1),
        "copied": score(copied, x_test, y_test, len(OFFSETS)),
        "copied_val": score(copied, x_val, y_val, len(OFFSETS))["accuracy"],
        "recovered_val": result.after["val_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = model_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| model | seed | trained | converted | recovered (ties) | recovered, output neurons "
        "doubled (ties) | validation: recovered -> doubled |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    closed: dict[str, list[float]] = {"recovered": [], "copied": []}
    within = 0
    for model in chosen_models(parser, args.models):
        for seed in args.seeds:
            r = run_one(model, seed)
            gap = r["trained"] - r["converted"]
            for key in closed:
                if gap > 0:
                    closed[key].append((r[key]["accuracy"] - r["converted"]) / gap)
            within += r["copied"]["accuracy"] >= r["trained"] - 0.005
            cells = [
                f"{100 * r['trained']:.1f} %",
                f"{100 * r['converted']:.1f} %",
                *(
                    f"{100 * r[k]['accuracy']:.1f} % ({100 * r[k]['ties']:.1f} %)"
                    for k in ("recovered", "copied")
                ),
                f"{100 * r['recovered_val']:.1f} -> {100 * r['copied_val']:.1f} %",
            ]
            print(f"| {model.name} | {seed} | " + " | ".join(cells) + " |", flush=True)
    runs = len(args.seeds) * len(chosen_models(parser, args.models))
    for key, values in closed.items():
        if values:
            print(f"{key}: median gap closed {statistics.median(values):.0%} over {len(values)} "
                  "runs with a gap")  # fmt: skip
    print(f"doubled: within 0.5 points of the trained model (or above): {within} of {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
