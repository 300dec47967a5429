"""Adapting without labels against adapting with them, over the corruption suite.

    python -m polystep_neuro.bench.labelfree_bench [--datasets digits mnist5k] [--seeds 0 1 2]
        [--steps 150] [--corruptions NAME ...] [--variants default biases]
        [--json rows.json]

For each dataset and seed an snnTorch network (Linear + Leaky, trained with BPTT on clean
images rate-coded over 16 steps) is deployed on torch-sim-fixed; then, for each corruption
at severity 3, the deployed network sees the corrupted training images and adapts to them
through `polystep_neuro.adapt` with its defaults, at the same budget (steps, batch,
parameter sets per step): once with the labels (the drifted-only recipe: hidden neuron
biases, anchored to the start) and once with the spikes alone (the label-free objective on
the hidden biases and thresholds, the same anchor, the network handed back chosen on the
objective over a held-out fifth, rolled back to the start unless the objective improved).
The clean and corrupted test sets are scored on the side and never seen by either run.
`recovered` is the label-free run's gain on the corrupted test set as a share of the
labelled run's (the ratio of the medians over corruptions and seeds); `rank correlation` is
Spearman's between the objective's change on the held-out fifth and the corrupted test
accuracy's change, at the last step of every label-free run. `significantly worse` counts
the runs that hand back a network worse than the start on the corrupted test set beyond its
sampling noise: McNemar's exact test on the test samples the two networks decide
differently (start right and handed back wrong, against the reverse), two-sided p < 0.05.
The defaults were chosen by the numbers of the corruptions marked `tuned`; the `held out`
ones are reported apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # `python polystep_neuro/bench/labelfree_bench.py`
    sys.path.insert(0, str(ROOT))

from polystep_neuro.bench.bptt import train_bptt  # noqa: E402
from polystep_neuro.run.corruptions import Corruption  # noqa: E402
from polystep_neuro.run.data import encode, encode_drifted, load_split  # noqa: E402

TIME_STEPS = 16
SEVERITY = 3
# The half the label-free defaults were chosen on, and the half kept out of that choice.
TUNED = ("rotate", "fog", "dead_channels", "shot_noise", "motion_blur", "brightness")
TUNED += ("gain_drift", "translate")
HELD_OUT = ("impulse_noise", "glass_blur", "shear", "scale", "stripe", "spatter")
HELD_OUT += ("dotted_line", "zigzag", "canny_edges", "hot_channels", "background_noise")
HELD_OUT += ("timing_jitter",)
# The mnist5k runs cost about 8x the digits ones: six of each half.
MNIST_CORRUPTIONS = ("rotate", "fog", "dead_channels", "shot_noise", "brightness", "gain_drift")
MNIST_CORRUPTIONS += ("impulse_noise", "shear", "stripe", "spatter", "zigzag", "background_noise")
# hidden neurons and BPTT epochs per dataset
NETWORKS = {"digits": (32, 10), "mnist5k": (64, 4)}
# What a label-free run adapts: the default (the hidden biases and thresholds where the
# device rewrites them), or the hidden biases alone (the ablation row).
VARIANTS = ("default", "biases")


@dataclass(frozen=True)
class Row:
    dataset: str
    seed: int
    corruption: str
    method: str  # "labelled", or "label-free" / "label-free, biases+thresholds"
    shifted: tuple[float, float]  # corrupted test accuracy: start, handed back
    clean: tuple[float, float]  # clean test accuracy: start, handed back
    last: tuple[float, float]  # at the last step: change of the validation objective and
    #   of the corrupted test accuracy (the rank correlation's pairs)
    kept_start: bool
    seconds: float
    # corrupted test samples the start decides right and the handed-back network wrong, and
    # the reverse (McNemar's discordant pairs)
    flips: tuple[int, int] = (0, 0)

    @property
    def half(self) -> str:
        return "tuned" if self.corruption in TUNED else "held out"


def train_model(dataset: str, seed: int, x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    """snnTorch's Leaky neurons after each Linear, trained with BPTT on clean spikes (zero
    reset in the step a neuron spikes, the reset Loihi 2 computes)."""
    import snntorch as snn

    hidden, epochs = NETWORKS[dataset]
    torch.manual_seed(seed)
    common = {"beta": 0.9, "reset_mechanism": "zero", "reset_delay": False, "init_hidden": True}
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[2], hidden),
        snn.Leaky(**common),
        torch.nn.Linear(hidden, 10),
        snn.Leaky(**common, output=True),
    )
    train_bptt(model, x, y, lr=1e-2, epochs=epochs, seed=seed, time_first=False)
    return model


def _deployed(model: torch.nn.Module, variant: str):
    """The trained model as the device runs it, and the writable set a run names (None: the
    defaults)."""
    from polystep_neuro.run.interop import from_snntorch, to_device_semantics

    spec, _ = to_device_semantics(from_snntorch(model, TIME_STEPS))
    hidden = range(len(spec.layers) - 1)
    if variant == "biases":
        return spec, tuple(f"lif{i}.v_bias" for i in hidden)
    return spec, None


def _decided_right(spec, spikes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which samples ``spec`` decides right on torch-sim-fixed, as the runs' accuracy reads
    them (a tie is wrong)."""
    from devices.registry import open_backend
    from polystep_neuro.run.losses import decisions

    backend = open_backend("torch-sim-fixed", device="cpu")
    try:
        backend.load(spec)
        counts = torch.as_tensor(backend.evaluate({}, torch.as_tensor(spikes)))[0]
    finally:
        backend.close()
    return (decisions(counts) == torch.as_tensor(labels)).numpy()


def flips(start, end, spikes: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(right before and wrong after, wrong before and right after) over the samples."""
    before, after = _decided_right(start, spikes, labels), _decided_right(end, spikes, labels)
    return int((before & ~after).sum()), int((~before & after).sum())


def mcnemar_p(pair: tuple[int, int]) -> float:
    """McNemar's exact two-sided p for discordant counts ``pair`` (1 when there are none)."""
    from scipy.stats import binomtest

    lost, won = pair
    return 1.0 if lost + won == 0 else float(binomtest(lost, lost + won, 0.5).pvalue)


def significantly_worse(r: Row, alpha: float = 0.05) -> bool:
    return r.flips[0] > r.flips[1] and mcnemar_p(r.flips) < alpha


def _row(dataset, seed, corruption, method, result, seconds, pair=(0, 0)) -> Row:
    history = [r for r in result.history if "shifted_accuracy" in r]
    first, last = history[0], history[-1]
    objective = last.get("val_loss", 0.0) - first.get("val_loss", 0.0)
    return Row(
        dataset,
        seed,
        corruption,
        method,
        (result.start["shifted_accuracy"], result.end["shifted_accuracy"]),
        (result.start["clean_accuracy"], result.end["clean_accuracy"]),
        (objective, last["shifted_accuracy"] - first["shifted_accuracy"]),
        result.kept_start,
        seconds,
        pair,
    )


def run_seed(
    dataset: str,
    seed: int,
    corruptions: Sequence[str],
    steps: int,
    variants: Sequence[str] = ("default",),
    progress: Callable[[str], None] = print,
) -> list[Row]:
    """One trained network per (dataset, seed); labelled and label-free runs per corruption."""
    import polystep_neuro as pn

    split = load_split(dataset, seed)
    model = train_model(dataset, seed, encode(split.x_train, TIME_STEPS), split.y_train)
    clean_test = (encode(split.x_test, TIME_STEPS), split.y_test)
    rows = []
    for name in corruptions:
        drift = Corruption(name, SEVERITY, seed=seed + 1)
        x_train = encode_drifted(split.x_train, TIME_STEPS, "rate", drift)
        test = {
            "shifted": (encode_drifted(split.x_test, TIME_STEPS, "rate", drift), split.y_test),
            "clean": clean_test,
        }
        runs = [("labelled", "default", (x_train, split.y_train))]
        runs += [
            ("label-free" + ("" if v == "default" else f", {v}"), v, x_train) for v in variants
        ]
        for method, variant, train in runs:
            spec, writable = _deployed(model, variant)
            t0 = time.perf_counter()
            result = pn.adapt(
                spec, "torch-sim-fixed", train=train, test=test, steps=steps, seed=seed,
                writable=writable, torch_device="cpu", progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            pair = flips(spec, result.result.spec, *test["shifted"])
            r = _row(dataset, seed, name, method, result.result, seconds, pair)
            _check_flips(r, len(test["shifted"][1]))
            rows.append(r)
            progress(
                f"{dataset} seed {seed} {name} {method}: shifted {100 * r.shifted[0]:.1f} -> "
                f"{100 * r.shifted[1]:.1f}, clean {100 * r.clean[0]:.1f} -> "
                f"{100 * r.clean[1]:.1f} ({r.seconds:.0f} s)"
            )
    return rows


def _check_flips(r: Row, samples: int) -> None:
    """The paired counts must add up to the accuracy change the run reported."""
    counted = (r.flips[1] - r.flips[0]) / samples
    if abs(counted - (r.shifted[1] - r.shifted[0])) > 0.5 / samples:
        raise AssertionError(
            f"{r.dataset} seed {r.seed} {r.corruption} {r.method}: the paired counts "
            f"{r.flips} give {counted:+.4f}, the run reported {r.shifted[1] - r.shifted[0]:+.4f}"
        )


def run(
    datasets: Sequence[str],
    seeds: Sequence[int],
    corruptions: Sequence[str],
    steps: int,
    variants: Sequence[str] = ("default",),
    progress: Callable[[str], None] = print,
) -> list[Row]:
    torch.set_num_threads(1)
    rows: list[Row] = []
    for dataset in datasets:
        for seed in seeds:
            rows += run_seed(dataset, seed, corruptions, steps, variants, progress)
    return rows


def _gain(r: Row, which: str = "shifted") -> float:
    pair = getattr(r, which)
    return 100 * (pair[1] - pair[0])


def _spearman(pairs: list[tuple[float, float]]) -> float:
    from scipy.stats import spearmanr

    if len(pairs) < 3:
        return float("nan")
    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs])[0])


def table(rows: list[Row]) -> list[str]:
    """Per dataset, half and method: medians over corruptions and seeds, the worst clean
    change, runs that hand back a network worse than the start on the corrupted test set,
    the recovered share and the objective's rank correlation with accuracy."""
    lines = [
        "| dataset | corruptions | method | corrupted test: median change | clean test: "
        "median / worst change | worse than the start | significantly worse | rolled back | "
        "recovered | rank correlation |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((r.dataset, r.half, r.method) for r in rows)
    for dataset, half, method in keys:
        mine = [r for r in rows if (r.dataset, r.half, r.method) == (dataset, half, method)]
        labelled = [r for r in rows if (r.dataset, r.half, r.method) == (dataset, half, "labelled")]
        gain = statistics.median(_gain(r) for r in mine)
        clean = [_gain(r, "clean") for r in mine]
        share, rank = "", ""
        if method != "labelled":
            reference = statistics.median(_gain(r) for r in labelled)
            share = f"{gain / reference:.0%}" if reference > 0 else "n/a"
            rank = f"{_spearman([r.last for r in mine]):+.2f}"
        lines.append(
            f"| {dataset} | {half} ({len({r.corruption for r in mine})} x "
            f"{len({r.seed for r in mine})} seeds) | {method} | {gain:+.1f} | "
            f"{statistics.median(clean):+.1f} / {min(clean):+.1f} | "
            f"{sum(_gain(r) < 0 for r in mine)} of {len(mine)} | "
            f"{sum(significantly_worse(r) for r in mine)} | "
            f"{sum(r.kept_start for r in mine)} | {share} | {rank} |"
        )
    return lines


def per_corruption(rows: list[Row]) -> list[str]:
    """Median changes per corruption (over seeds), labelled beside label-free."""
    methods = list(dict.fromkeys(r.method for r in rows))
    head = " | ".join(f"{m}: corrupted / clean" for m in methods)
    lines = [f"| dataset | corruption | half | {head} |", "|---|---|---|" + "---:|" * len(methods)]
    for dataset, name in dict.fromkeys((r.dataset, r.corruption) for r in rows):
        cells = []
        for m in methods:
            mine = [r for r in rows if (r.dataset, r.corruption, r.method) == (dataset, name, m)]
            cells.append(
                f"{statistics.median(_gain(r) for r in mine):+.1f} / "
                f"{statistics.median(_gain(r, 'clean') for r in mine):+.1f}"
            )
        half = "tuned" if name in TUNED else "held out"
        lines.append(f"| {dataset} | {name} | {half} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="adaptation steps of every run")
    parser.add_argument("--corruptions", nargs="+", default=[*TUNED, *HELD_OUT])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["default"])
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args(argv)
    rows = run(
        args.datasets, args.seeds, args.corruptions, args.steps, args.variants,
        lambda s: print(s, file=sys.stderr, flush=True),
    )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1), encoding="utf-8")
    print("\n".join(table(rows)))
    print()
    print("\n".join(per_corruption(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
