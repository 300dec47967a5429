"""Deployment recovery of snnTorch-trained networks: the accuracy a conversion to the device
costs, and how much of it ``polystep-neuro deploy`` wins back, forward passes only.

    python -m polystep_neuro.bench.deploy_bench [--seeds 0 1 2] [--models NAME ...]
        [--backend torch-sim-fixed] [--budget 50000] [--quick] [--json FILE]

Each model is built the way snnTorch users build them: ``nn.Linear`` layers with biases,
``snn.Leaky(beta=0.9)`` / ``snn.Synaptic(alpha=0.9, beta=0.8)`` with snnTorch's defaults
(subtract reset, ``reset_delay=True``), trained with BPTT on time-first ``spikegen.rate``
spike trains of four fifths of the training split (the seed draws the initial weights, the
spike trains and the fifth held out).  ``deploy`` then runs with its defaults: the model
converted for the backend (zero reset in the spiking step, one-step delay, Dense biases
folded), a per-neuron calibration against the model's own spike counts on the four fifths,
every output neuron doubled and a class counted over both where validation holds (the
column ``output neurons a class``; then, where validation is still 2 points below the
trained model, or always with ``--adapt``, PolyStep towards the model's outputs: soft
targets plus labels),
the held-out fifth as validation (what is handed back is never less accurate on it than
the converted network).
The test split is never seen: its accuracy is reported for the trained model, the
converted device network (the gap), after calibration and after recovery.  Gap closed =
(recovered - converted) / (trained - converted) on the test split.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # `python -m polystep_neuro.bench.deploy_bench`
    sys.path.insert(0, str(ROOT))

from polystep_neuro.bench.bptt import train_bptt  # noqa: E402
from polystep_neuro.run.cli_args import add_adapt_switch  # noqa: E402
from polystep_neuro.run.data import hold_out, load_split  # noqa: E402


@dataclass(frozen=True)
class Model:
    """One bench model: the data, the layer sizes, the hidden neurons and the training."""

    name: str
    dataset: str
    sizes: tuple[int, ...]
    hidden: str  # "leaky" or "synaptic" (the output layer is always snn.Leaky)
    num_steps: int
    epochs: int
    lr: float = 2e-3


MODELS = (
    Model("digits 64-128-10 Leaky", "digits", (64, 128, 10), "leaky", 16, 30),
    Model("digits 64-128-64-10 Synaptic", "digits", (64, 128, 64, 10), "synaptic", 16, 30),
    Model("mnist5k 784-128-10 Leaky", "mnist5k", (784, 128, 10), "leaky", 25, 15),
)
QUICK = Model("digits 64-16-10 Leaky (quick)", "digits", (64, 16, 10), "leaky", 8, 4, lr=1e-2)


@dataclass(frozen=True)
class Row:
    model: str
    seed: int
    backend: str
    trained: float  # test accuracy of the snnTorch model
    converted: float  # of the device network right after conversion
    calibrated: float  # after the calibration stage
    recovered: float  # of what deploy hands back
    val_trained: float
    val_converted: float
    val_recovered: float
    parameter_sets: int
    train_seconds: float
    deploy_seconds: float
    output_copies: int = 1  # output neurons a class in what deploy handed back
    adaptation_steps: int = 0  # PolyStep steps of stage 3 (0: it did not run)

    @property
    def gap_closed(self) -> float:
        gap = self.trained - self.converted
        return (self.recovered - self.converted) / gap if gap > 0 else float("nan")


def build(model: Model, seed: int) -> torch.nn.Sequential:
    """An snnTorch model with snnTorch's defaults (the surrogate pickle can save)."""
    import snntorch as snn

    torch.manual_seed(seed)
    grad = functools.partial(snn.surrogate.ATan.apply, alpha=2.0)  # = the default atan()
    layers: list[torch.nn.Module] = []
    last = len(model.sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(model.sizes[:-1], model.sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < last and model.hidden == "synaptic":
            layers.append(snn.Synaptic(alpha=0.9, beta=0.8, spike_grad=grad, init_hidden=True))
        else:
            layers.append(snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, output=i == last))
    return torch.nn.Sequential(*layers)


def spikes(x: np.ndarray, num_steps: int, seed: int) -> np.ndarray:
    """snnTorch's rate coding, time-first (T, n, F) uint8, drawn from ``seed``."""
    from snntorch import spikegen

    torch.manual_seed(seed)
    return spikegen.rate(torch.as_tensor(x), num_steps=num_steps).to(torch.uint8).numpy()


Split = tuple[np.ndarray, np.ndarray]  # time-first spikes (T, n, F) and labels


def trained(model: Model, seed: int) -> tuple[torch.nn.Sequential, Split, Split, Split]:
    """The seed's snnTorch model trained with BPTT, and its training, validation (the
    held-out fifth) and test sets as time-first spike trains."""
    split = load_split(model.dataset, 0)
    kept, held = hold_out(len(split.y_train), 0.2, seed)
    t = model.num_steps
    x_train = spikes(split.x_train[kept], t, seed)
    x_val = spikes(split.x_train[held], t, seed + 1000)
    x_test = spikes(split.x_test, t, 7)  # one test set for every seed
    y_train, y_val = split.y_train[kept], split.y_train[held]
    net = build(model, seed)
    train_bptt(net, x_train, y_train, lr=model.lr, epochs=model.epochs, seed=seed, time_first=True)
    return net, (x_train, y_train), (x_val, y_val), (x_test, split.y_test)


def run_one(
    model: Model,
    seed: int,
    backend: str,
    budget: int,
    progress: Callable[[str], None],
    adapt: bool | None = None,
) -> Row:
    """Train one model, deploy it, score every stage."""
    import polystep_neuro as pn

    start = time.perf_counter()
    net, (x_train, y_train), (x_val, y_val), (x_test, y_test) = trained(model, seed)
    trained_s = time.perf_counter() - start
    progress(f"deploy: {model.name} seed {seed}: trained in {trained_s:.0f} s")
    t = model.num_steps
    start = time.perf_counter()
    result = pn.deploy(
        net,
        backend,
        data=(x_train, y_train),
        validation=(x_val, y_val),
        test={"test": (x_test, y_test)},
        time_steps=t,
        time_first=True,
        budget=budget,
        adapt=adapt,
        seed=seed,
        progress=False,
    )
    row = Row(
        model=model.name,
        seed=seed,
        backend=backend,
        trained=result.reference["test_accuracy"],
        converted=result.before["test_accuracy"],
        calibrated=result.calibrated["test_accuracy"],
        recovered=result.after["test_accuracy"],
        val_trained=result.reference["val_accuracy"],
        val_converted=result.before["val_accuracy"],
        val_recovered=result.after["val_accuracy"],
        parameter_sets=result.parameter_sets,
        train_seconds=trained_s,
        deploy_seconds=time.perf_counter() - start,
        output_copies=result.output_copies,
        adaptation_steps=result.result.steps,
    )
    progress(
        f"deploy: {model.name} seed {seed}: trained {row.trained:.1%}, converted "
        f"{row.converted:.1%}, calibrated {row.calibrated:.1%}, recovered {row.recovered:.1%} "
        f"({row.deploy_seconds:.0f} s)"
    )
    return row


def run(
    models: tuple[Model, ...],
    seeds: list[int],
    backend: str = "torch-sim-fixed",
    budget: int = 50_000,
    progress: Callable[[str], None] = print,
    adapt: bool | None = None,
) -> list[Row]:
    torch.set_num_threads(1)
    return [run_one(m, s, backend, budget, progress, adapt) for m in models for s in seeds]


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | seed | backend | trained (snnTorch) | converted (gap) | calibrated | "
        "output neurons a class | recovered | gap closed | validation: converted -> "
        "recovered | PolyStep steps | parameter sets | deploy s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = 100 * (r.converted - r.trained)
        closed = "n/a (no gap)" if r.gap_closed != r.gap_closed else f"{r.gap_closed:.0%}"
        lines.append(
            f"| {r.model} | {r.seed} | {r.backend} | {100 * r.trained:.1f} % | "
            f"{100 * r.converted:.1f} % ({gap:+.1f}) | {100 * r.calibrated:.1f} % | "
            f"{r.output_copies} | "
            f"{100 * r.recovered:.1f} % ({100 * (r.recovered - r.trained):+.1f}) | {closed} | "
            f"{100 * r.val_converted:.1f} -> {100 * r.val_recovered:.1f} % | "
            f"{r.adaptation_steps} | {r.parameter_sets:,} | {r.deploy_seconds:.0f} |"
        )
    closed = [r.gap_closed for r in rows if r.gap_closed == r.gap_closed]
    if closed:
        lines.append(
            f"| median over {len(closed)} runs with a gap | | | | | | | | "
            f"{statistics.median(closed):.0%} | | | | |"
        )
    within = sum(abs(r.recovered - r.trained) <= 0.005 or r.recovered > r.trained for r in rows)
    never_worse = all(r.val_recovered >= r.val_converted for r in rows)
    lines += [
        "",
        f"recovered within 0.5 points of the trained model (or above it): {within} of "
        f"{len(rows)}; never less accurate than the converted network on validation: "
        f"{'yes' if never_worse else 'no'}",
    ]
    return lines


def model_parser(description: str) -> argparse.ArgumentParser:
    """The options every script over the bench models shares: --seeds and --models."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--models", nargs="+", help=f"names among: {'; '.join(m.name for m in MODELS)}"
    )
    return parser


def chosen_models(parser: argparse.ArgumentParser, names: list[str] | None) -> tuple[Model, ...]:
    """The bench models ``--models`` names (all of them when none); a wrong name is a usage
    error."""
    models = MODELS if not names else tuple(m for m in MODELS if m.name in names)
    if names and len(models) != len(names):
        parser.error(f"--models: choose among {[m.name for m in MODELS]}")
    return models


def main(argv: list[str] | None = None) -> int:
    parser = model_parser(__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch-sim-fixed")
    parser.add_argument("--budget", type=int, default=50_000, help="parameter sets per model")
    parser.add_argument("--quick", action="store_true", help="one tiny model, a small budget")
    add_adapt_switch(
        parser,
        always="deploy --adapt: the PolyStep stage always",
        never="deploy --no-adapt: calibration and output copies only (default: deploy's own "
        "rule, the stage where a gap is left)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        models, budget = (QUICK,), min(args.budget, 3_000)
    else:
        models = chosen_models(parser, args.models)
        budget = args.budget
    rows = run(models, args.seeds, args.backend, budget, lambda s: print(s, flush=True), args.adapt)
    print("\n".join(table(rows)))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
