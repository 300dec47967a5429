"""The task zoo: adaptations users run on the networks they bring (bench.adapt_bench --zoo).

Each task is one network, one writable set, one kind of data and one device arithmetic:
snnTorch networks with snnTorch's defaults (``snn.Leaky(beta=0.9)``, ``snn.Synaptic``,
subtract reset one step late, ``nn.Linear`` with bias), trained with BPTT on clean data
as examples/snntorch_digits.py does, converted to the device (``from_snntorch``; for
fixed point also ``to_device_semantics``, as ``polystep-neuro convert`` does), then
adapted to a drifted sensor; or a random network trained from scratch.  The data plumbing
is ``pn.adapt``'s: a fifth of the drifted data (and of the replay) held out for
validation, the anchor weight from ``run_defaults``.

Every task names the half it belongs to: ``tuned`` tasks are the ones PolyStep's defaults
may be chosen on, ``held-out`` tasks are only reported.  Sizes are chosen so the whole zoo
fits a few hours of one CPU core; ``quick`` shrinks everything to a smoke test.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.data import SpikeDataset, Split, concat, hold_out, load_split, rate_encode
from polystep_neuro.run.interop import device_writable, from_snntorch, to_device_semantics
from polystep_neuro.run.run_defaults import anchor_weight
from polystep_neuro.run.writable import hidden_biases

CACHE = Path("runs/bench-cache/zoo")
TUNED, HELD_OUT = "tuned", "held-out"
VAL_FRACTION = 0.2  # pn.adapt's default
QUICK_RANK = 8  # the quick zoo's subspace rank per tensor (fewer candidates per step)


@dataclass(frozen=True)
class Drift:
    """A deployed sensor's drift, applied to intensities in [0, 1] before encoding: a gain
    per input channel in ``[gain_low, gain_high]``, a background level (spurious spikes)
    and dead channels, drawn once per seed (a sensor does not heal between samples)."""

    gain_low: float
    gain_high: float
    background: float
    dead_fraction: float

    def __call__(self, x: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 11])
        features = x.shape[1]
        gain = rng.uniform(self.gain_low, self.gain_high, size=features)
        dead = rng.choice(features, size=int(round(self.dead_fraction * features)), replace=False)
        out = np.clip(x * gain + self.background, 0.0, 1.0).astype(np.float32)
        out[:, dead] = 0.0
        return out


# MNIST's 784 redundant pixels shrug off the digits' drift; a stronger one costs them as much.
DRIFTS = {"digits": Drift(0.2, 0.8, 0.08, 0.15), "mnist5k": Drift(0.1, 0.6, 0.12, 0.25)}


@dataclass(frozen=True)
class Net:
    """A network before deployment: its layer sizes (inputs first), neuron model and T."""

    dataset: str  # "digits" | "mnist5k"
    sizes: tuple[int, ...]
    neuron: str  # "leaky" | "synaptic" (BPTT-trained snnTorch) | "random" (from scratch)
    time_steps: int
    epochs: int = 10  # BPTT epochs on the clean training set

    @property
    def label(self) -> str:
        return f"{'-'.join(map(str, self.sizes))} {self.neuron}"


@dataclass(frozen=True)
class Task:
    name: str
    half: str  # TUNED or HELD_OUT
    net: Net
    writable: str  # "readout" | "hidden-biases" | "every"
    data: str  # "drifted" | "replay" (drifted + clean replay) | "scratch" (clean, from random)
    backend: str  # "torch-sim" | "torch-sim-fixed"
    steps: int  # PolyStep's steps at the full budget (the budget: steps x its candidates)
    batch: int = 128

    @property
    def key(self) -> str:
        """The test set that scores the task: the drifted one, or clean when training."""
        return "clean" if self.data == "scratch" else "shifted"


DIGITS_LEAKY = Net("digits", (64, 32, 10), "leaky", 16)
DIGITS_SYN2 = Net("digits", (64, 48, 24, 10), "synaptic", 16, epochs=15)
DIGITS_LEAKY2 = Net("digits", (64, 48, 24, 10), "leaky", 16, epochs=15)
MNIST_LEAKY = Net("mnist5k", (784, 128, 10), "leaky", 8, epochs=4)
MNIST_RANDOM = Net("mnist5k", (784, 128, 10), "random", 8)
DIGITS_RANDOM2 = Net("digits", (64, 64, 32, 10), "random", 16)

TASKS: tuple[Task, ...] = (
    Task("digits-leaky-readout-replay", TUNED, DIGITS_LEAKY, "readout", "replay",
         "torch-sim-fixed", 300),
    Task("digits-leaky-biases-drifted", HELD_OUT, DIGITS_LEAKY, "hidden-biases", "drifted",
         "torch-sim-fixed", 300),
    Task("digits-leaky-every-replay", TUNED, DIGITS_LEAKY, "every", "replay",
         "torch-sim-fixed", 300),
    Task("digits-synaptic2-every-replay", HELD_OUT, DIGITS_SYN2, "every", "replay",
         "torch-sim", 300),
    Task("digits-synaptic2-biases-drifted", TUNED, DIGITS_SYN2, "hidden-biases", "drifted",
         "torch-sim", 300),
    Task("digits-leaky2-every-drifted", HELD_OUT, DIGITS_LEAKY2, "every", "drifted",
         "torch-sim-fixed", 300),
    Task("mnist-leaky-readout-drifted", TUNED, MNIST_LEAKY, "readout", "drifted",
         "torch-sim", 200, batch=64),
    Task("mnist-leaky-every-replay", HELD_OUT, MNIST_LEAKY, "every", "replay",
         "torch-sim-fixed", 150, batch=64),
    Task("digits-scratch2-every", TUNED, DIGITS_RANDOM2, "every", "scratch",
         "torch-sim", 300),
    Task("mnist-scratch-every", HELD_OUT, MNIST_RANDOM, "every", "scratch",
         "torch-sim-fixed", 200, batch=64),
)  # fmt: skip
BY_NAME = {task.name: task for task in TASKS}


@dataclass
class Built:
    """One task on one seed, ready for ``Adapter.build``."""

    task: Task
    seed: int
    spec: NetworkSpec  # as deployed, its writable set the task's
    anchor: float
    rank: int | None  # the subspace rank the runs use (None: the default)
    stream: SpikeDataset
    validation: dict[str, SpikeDataset]
    test: dict[str, SpikeDataset]


def quick_version(task: Task) -> Task:
    """The task shrunk to a smoke test: a narrow network, few steps, a small batch."""
    net = task.net
    sizes = (net.sizes[0], *(min(n, 16) for n in net.sizes[1:-1]), net.sizes[-1])
    small = replace(net, sizes=sizes, time_steps=6, epochs=3)
    return replace(task, net=small, steps=4, batch=32)


def build(task: Task, seed: int, quick: bool = False) -> Built:
    """The deployed network, its writable set and anchor, and the data of ``task``."""
    if quick:
        task = quick_version(task)
    net = task.net
    split = _split(net.dataset, seed)
    if quick:
        split = replace(split, x_train=split.x_train[:300], y_train=split.y_train[:300],
                        x_test=split.x_test[:150], y_test=split.y_test[:150])  # fmt: skip
    drift = DRIFTS[net.dataset]
    steps = net.time_steps
    clean_train, clean_test = rate_encode(split.x_train, steps), rate_encode(split.x_test, steps)
    spec = _network(net, clean_train, split.y_train, seed, quick)
    if task.backend == "torch-sim-fixed":
        spec, _ = to_device_semantics(spec)
    spec = spec.with_writable(device_writable(spec))
    names = _writable(task, spec)
    anchor = anchor_weight(task.data != "drifted", 0.0 if task.data == "scratch" else None)
    spec = spec.with_writable(names)

    def ds(spikes: np.ndarray, labels: np.ndarray) -> SpikeDataset:
        return SpikeDataset(spikes, labels, task.batch, seed)

    test = {"clean": ds(clean_test, split.y_test)}
    if task.data == "scratch":
        stream = ds(clean_train, split.y_train)
    else:
        stream = ds(rate_encode(drift(split.x_train, seed), steps), split.y_train)
        test["shifted"] = ds(rate_encode(drift(split.x_test, seed), steps), split.y_test)
    kept, held = hold_out(len(stream), VAL_FRACTION, seed)
    stream, validation = stream.subset(kept), {"validation": stream.subset(held)}
    if task.data == "replay":
        clean = ds(clean_train, split.y_train)
        kept, held = hold_out(len(clean), VAL_FRACTION, seed)
        stream = concat(stream, clean.subset(kept), task.batch, seed)
        validation["replay"] = clean.subset(held)
    rank = QUICK_RANK if quick else None
    return Built(task, seed, spec, anchor, rank, stream, validation, test)


@functools.lru_cache(maxsize=4)
def _split(dataset: str, seed: int) -> Split:
    """The dataset's split, read once per process (mnist5k's CSV takes seconds to parse)."""
    return load_split(dataset, seed)


def _writable(task: Task, spec: NetworkSpec) -> tuple[str, ...]:
    last = len(spec.layers) - 1
    if task.writable == "readout":
        return (f"fc{last}.weight", f"lif{last}.v_bias")
    if task.writable == "hidden-biases":
        return hidden_biases(spec, spec.writable)
    return tuple(spec.writable)


def _network(
    net: Net, spikes: np.ndarray, labels: np.ndarray, seed: int, quick: bool
) -> NetworkSpec:
    """A random LIF network, or the BPTT-trained snnTorch one (cached per net and seed)."""
    if net.neuron == "random":
        return NetworkSpec.random(list(net.sizes), net.time_steps, seed=seed, du=1.0, dv=0.1,
                                  vth=1.0, weight_gain=1.0)  # fmt: skip
    path = CACHE / f"{net.dataset}-{'-'.join(map(str, net.sizes))}-{net.neuron}-" \
        f"T{net.time_steps}-e{net.epochs}-{seed}.npz"  # fmt: skip
    if path.exists():
        return NetworkSpec.load(path)
    model = snntorch_model(net, seed)
    train_bptt(model, spikes, labels, epochs=net.epochs, seed=seed)
    spec = from_snntorch(model, num_steps=net.time_steps)
    if not quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        spec.save(path)
    return spec


def snntorch_model(net: Net, seed: int) -> torch.nn.Sequential:
    """``nn.Linear`` + ``snn.Leaky(beta=0.9)`` or ``snn.Synaptic(alpha=0.8, beta=0.9)`` per
    layer, every other setting snnTorch's default."""
    import snntorch as snn

    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    pairs = list(zip(net.sizes[:-1], net.sizes[1:], strict=True))
    for i, (n_in, n_out) in enumerate(pairs):
        layers.append(torch.nn.Linear(n_in, n_out))
        last = i == len(pairs) - 1
        if net.neuron == "leaky":
            layers.append(snn.Leaky(beta=0.9, init_hidden=True, output=last))
        else:
            layers.append(snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True, output=last))
    return torch.nn.Sequential(*layers)


def spike_counts(model: torch.nn.Sequential, spikes: torch.Tensor) -> torch.Tensor:
    """Output spike counts (B, N_out) over the T steps of ``spikes`` (B, T, N_in)."""
    from snntorch import utils as snn_utils

    snn_utils.reset(model)
    total = torch.zeros(())
    for t in range(spikes.shape[1]):
        out = model(spikes[:, t])
        total = total + out[0]
    return total


def train_bptt(
    model: torch.nn.Sequential,
    spikes: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 1e-2,
) -> None:
    """BPTT with snnTorch's surrogate gradient, cross-entropy on the spike counts (what
    examples/snntorch_digits.py does)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(spikes, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(y) / batch_size)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(spike_counts(model, x[idx]) * 0.5, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
