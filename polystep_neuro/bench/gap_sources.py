"""Where a deployment gap comes from: the device's semantics applied one change at a time.

    python -m polystep_neuro.bench.gap_sources [--seeds 0 1 2] [--models NAME ...]

Each deployment bench model (:mod:`polystep_neuro.bench.deploy_bench`, trained the same way
for the same seed) is read exactly (``snntorch_spec``: snnTorch's own resets and timing) and
scored on the test split on float torch-sim with one of the device's changes at a time — the
zero reset in the spiking step, the one-step delay per layer, the Dense bias folded into
the neuron bias — then all of them, then all of them in Loihi 2 fixed point (what
``deploy`` starts from).  ``deploy``'s calibration aims at what the first column costs; this
says how much of the gap that is.

Two more columns say where the points go.  ``drained``: the device network run for as many
silent steps more as its layers delay the input, so that the last input steps reach the
output (the device's run is that much longer).  ``ties``: the share of test samples whose
top output count is shared by several neurons (the project counts a tie as wrong), read
exactly and on the device, and in brackets those whose label is among the tied.
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


def test_counts(spec: NetworkSpec, spikes: np.ndarray, precision: str) -> torch.Tensor:
    """Output counts (n, N_out) of ``spec`` on time-first ``spikes`` (T, n, F)."""
    inputs = np.ascontiguousarray(spikes.swapaxes(0, 1))
    return torch.as_tensor(TorchLIF(spec, precision).evaluate({}, inputs).counts[0])


def test_accuracy(
    spec: NetworkSpec, spikes: np.ndarray, labels: np.ndarray, precision: str
) -> float:
    """Accuracy of ``spec`` on time-first ``spikes`` (T, n, F), the project's tie rule."""
    counts = test_counts(spec, spikes, precision).to(torch.float32)
    return float(accuracy(counts[None], torch.as_tensor(labels))[0])


def drained(spec: NetworkSpec, spikes: np.ndarray) -> tuple[NetworkSpec, np.ndarray]:
    """``spec`` run ``total_delay`` steps longer on ``spikes`` followed by silent steps."""
    extra = spec.total_delay
    silent = np.zeros((extra, *spikes.shape[1:]), dtype=spikes.dtype)
    longer = NetworkSpec(spec.layers, spec.num_steps + extra).validate()
    return longer, np.concatenate([spikes, silent])


def ties(counts: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Share of samples whose top count is shared, and of those with the label among them."""
    top = counts.max(dim=1, keepdim=True).values
    tied = (counts == top).sum(dim=1) > 1
    label_top = counts.gather(1, torch.as_tensor(labels)[:, None])[:, 0] == top[:, 0]
    return float(tied.float().mean()), float((tied & label_top).float().mean())


def gap_sources(model: Model, seed: int) -> dict[str, float]:
    """Test accuracy of every column of :data:`VARIANTS` for one trained model."""
    net, _, _, (x_test, y_test) = trained(model, seed)
    exact, _ = snntorch_spec(net, model.num_steps)
    t = exact.num_steps
    row = {}
    for name, (change, precision) in VARIANTS.items():
        layers = [change(i, layer, t) for i, layer in enumerate(exact.layers)]
        row[name] = test_accuracy(NetworkSpec(layers, t).validate(), x_test, y_test, precision)
    device = NetworkSpec([_device(i, layer, t) for i, layer in enumerate(exact.layers)], t)
    row["drained"] = test_accuracy(*drained(device.validate(), x_test), y_test, "loihi-fixed")
    row["ties exact"], row["label tied exact"] = ties(test_counts(exact, x_test, "float32"), y_test)
    row["ties device"], row["label tied device"] = ties(
        test_counts(device.validate(), x_test, "loihi-fixed"), y_test
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = model_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    models = chosen_models(parser, args.models)
    torch.set_num_threads(1)
    names = [*VARIANTS, "drained"]
    print("| model | seed | " + " | ".join(names) + " | ties: exact | ties: device |")
    print("|---|---:|" + "---:|" * (len(names) + 2))
    for model in models:
        for seed in args.seeds:
            row = gap_sources(model, seed)
            cells = [f"{100 * row['exact']:.1f} %"] + [
                f"{100 * (row[n] - row['exact']):+.1f}" for n in names[1:]
            ]
            cells += [
                f"{100 * row[f'ties {w}']:.1f} % ({100 * row[f'label tied {w}']:.1f})"
                for w in ("exact", "device")
            ]
            print(f"| {model.name} | {seed} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
