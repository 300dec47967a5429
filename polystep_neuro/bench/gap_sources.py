"""Where a deployment gap comes from: the device's semantics applied one change at a time.

    python -m polystep_neuro.bench.gap_sources [--seeds 0 1 2] [--models NAME ...]

Each deployment bench model (:mod:`polystep_neuro.bench.deploy_bench`, trained the same way
for the same seed) is read exactly (``snntorch_spec``: snnTorch's own resets and timing) and
scored on the test split on float torch-sim with one of the device's changes at a time — the
zero reset in the spiking step, the one-step delay per layer, the Dense bias folded into
the neuron bias — then all of them, then all of them in Loihi 2 fixed point (what
``deploy`` starts from).  ``deploy``'s calibration aims at what the first column costs; this
says how much of the gap that is.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # `python -m polystep_neuro.bench.gap_sources`
    sys.path.insert(0, str(ROOT))

from polystep_neuro.bench.deploy_bench import (  # noqa: E402
    Model,
    chosen_models,
    model_parser,
    trained,
)
from polystep_neuro.core.network import LayerSpec, NetworkSpec  # noqa: E402
from polystep_neuro.run.interop import device_layer  # noqa: E402
from polystep_neuro.run.interop.snntorch import snntorch_spec  # noqa: E402
from polystep_neuro.run.losses import accuracy  # noqa: E402
from simulators.torch_lif import TorchLIF  # noqa: E402

Change = Callable[[int, LayerSpec, int], LayerSpec]


def _device(i: int, layer: LayerSpec, t: int) -> LayerSpec:
    return device_layer(i, layer, t)[0]


def _fold_only(i: int, layer: LayerSpec, t: int) -> LayerSpec:
    folded = _device(i, layer, t)
    return replace(folded, reset=layer.reset, reset_delay=layer.reset_delay, delay=layer.delay)


# column -> (the change made to every layer, the precision it runs in)
VARIANTS: dict[str, tuple[Change, str]] = {
    "exact": (lambda i, layer, t: layer, "float32"),
    "zero reset": (lambda i, layer, t: replace(layer, reset="zero", reset_delay=False), "float32"),
    "delay 1": (lambda i, layer, t: replace(layer, delay=1), "float32"),
    "bias folded": (_fold_only, "float32"),
    "all three": (_device, "float32"),
    "all, fixed point": (_device, "loihi-fixed"),
}


def test_accuracy(
    spec: NetworkSpec, spikes: np.ndarray, labels: np.ndarray, precision: str
) -> float:
    """Accuracy of ``spec`` on time-first ``spikes`` (T, n, F), the project's tie rule."""
    inputs = np.ascontiguousarray(spikes.swapaxes(0, 1))
    counts = torch.as_tensor(TorchLIF(spec, precision).evaluate({}, inputs).counts)
    return float(accuracy(counts.to(torch.float32), torch.as_tensor(labels))[0])


def gap_sources(model: Model, seed: int) -> dict[str, float]:
    """Test accuracy of every column of :data:`VARIANTS` for one trained model."""
    net, _, _, (x_test, y_test) = trained(model, seed)
    exact, _ = snntorch_spec(net, model.num_steps)
    t = exact.num_steps
    row = {}
    for name, (change, precision) in VARIANTS.items():
        layers = [change(i, layer, t) for i, layer in enumerate(exact.layers)]
        row[name] = test_accuracy(NetworkSpec(layers, t).validate(), x_test, y_test, precision)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = model_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    models = chosen_models(parser, args.models)
    torch.set_num_threads(1)
    names = list(VARIANTS)
    print("| model | seed | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for model in models:
        for seed in args.seeds:
            row = gap_sources(model, seed)
            cells = [f"{100 * row['exact']:.1f} %"] + [
                f"{100 * (row[n] - row['exact']):+.1f}" for n in names[1:]
            ]
            print(f"| {model.name} | {seed} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
