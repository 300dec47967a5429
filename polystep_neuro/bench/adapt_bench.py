"""PolyStep vs sep-CMA-ES / OpenAI-ES / SPSA through the same adaptation loop, and PolyStep's
ablations, at equal forward passes.

    python -m polystep_neuro.bench.adapt_bench [--tasks demo all-weights] [--seeds 0 1 2] [--quick]
                                [--dataset digits|mnist5k] [--faster-start]
    python -m polystep_neuro.bench.adapt_bench --zoo [...]   (polystep_neuro.bench.zoo)

Every method runs through :class:`polystep_neuro.run.controller.Adapter` with the recipe's
defaults (:mod:`polystep_neuro.run.optimizers`; nothing tuned per task), so this is what
``polystep-neuro adapt --optimizer NAME`` gives a user.  One forward pass = one parameter set
evaluated on one minibatch of B=128 samples.

Tasks:
- ``demo``: the demo's adaptation stage.  The demo's own pretraining (cached under
  ``runs/bench-cache``), Loihi 2 fixed point, the input shift, then the readout
  (``fc1.weight``) adapted on a clean + shifted stream.  The hidden layer does not change, so
  its spikes are computed once and each candidate runs the readout alone (torch-sim-fixed;
  counts identical to the full network's, checked).  Scored: shifted and clean test accuracy,
  shifted test loss.
- ``all-weights``: every weight of a 64-64-10 float LIF network (4,736 values, each tensor
  through a rank-64 subspace for PolyStep) trained from its random start on clean digits.
  Scored: test loss and accuracy.

Test scores are of each method's current point at each budget (measured in the same run,
not charged).  The ablation runs (PolyStep's default with one thing switched off, full budget,
both tasks) also report, on ``demo``, what keep-best on validation hands back.
``--faster-start`` adds PolyStep variants that move faster early (a longer initial step, a
step that follows the evidence faster), scored at every budget: what a faster start buys at
the small budgets and costs at the full one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.adapt_bench`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devices.torch_sim import TorchSimBackend  # noqa: E402
from polystep_neuro.core.network import NetworkSpec  # noqa: E402
from polystep_neuro.run.controller import Adapter  # noqa: E402
from polystep_neuro.run.data import (  # noqa: E402
    DATASETS,
    SpikeDataset,
    concat,
    load_split,
    rate_encode,
)
from polystep_neuro.run.evaluation import Score  # noqa: E402
from polystep_neuro.run.optimizers import (  # noqa: E402
    OPTIMIZERS,
    Settings,
    make_layout,
    make_optimizer,
)
from simulators import fixed_point  # noqa: E402
from simulators.torch_lif import TorchLIF  # noqa: E402

BATCH = 128
TASKS = ("demo", "all-weights")
DEFAULT_SEEDS = [0, 1, 2]
CACHE = Path("runs/bench-cache")
# One row per addition to PolyStep: the default with that one thing switched off (and the
# final decay, once the default, switched on).
ABLATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "no momentum": {"momentum": 0.0},
    "subspace redrawn every 20 steps (not every step)": {"absorb_interval": 20},
    "step does not follow the evidence (step_adapt 0)": {"step_adapt": 0.0},
    "step decays to a tenth by the last step (final_step 0.1)": {"final_step": 0.1},
    "small probes (0.05 of each tensor's magnitude, not 0.5)": {"probe": 0.05},
}

# PolyStep moving faster early (--faster-start), against the default at every budget.
FASTER_START: dict[str, dict[str, Any]] = {
    "default": {},
    "initial step 0.3 (default 0.15)": {"step": 0.3},
    "step follows the evidence twice as fast (step_adapt 0.1)": {"step_adapt": 0.1},
}

Progress = Callable[[str], None]


@dataclass
class Task:
    name: str
    backend: TorchSimBackend
    train: SpikeDataset
    validation: dict[str, SpikeDataset]
    test: dict[str, SpikeDataset]
    budgets: list[int]  # forward passes of BATCH samples


@dataclass
class Run:
    task: str
    method: str
    seed: int
    candidates: int
    points: list[dict[str, float]] = field(default_factory=list)  # per budget
    handed_back: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- tasks
def demo_task(seed: int, quick: bool, progress: Progress, dataset: str = "digits") -> Task:
    """The demo's adaptation problem on a readout-only backend (see module doc)."""
    from polystep_neuro.run.demo import DemoConfig, load_data, pretrain

    base = DemoConfig.quick() if quick else DemoConfig()
    cfg = replace(
        base, seed=seed, dataset=dataset, resume=True, progress=False, eval_every=0,
        out_dir=CACHE / f"demo-{dataset}-{'quick' if quick else 'full'}-{seed}",
    )  # fmt: skip
    device = torch.device("cpu")
    data = load_data(cfg, device)
    progress(f"demo task, seed {seed}: pretraining (cached in {cfg.out_dir})")
    trained = pretrain(cfg, data, device).spec.with_writable(("fc1.weight",))
    deployed = fixed_point.calibrate(trained)
    full = TorchLIF(deployed, "loihi-fixed", device)
    readout = NetworkSpec([deployed.layers[1]], deployed.num_steps, ("fc0.weight",)).validate()

    def hidden(ds: SpikeDataset, check: bool = False) -> SpikeDataset:
        rec = full.evaluate({}, ds.spikes, record=True)
        spikes = rec.spikes[0][0].contiguous()
        if check:
            ro = TorchLIF(readout, "loihi-fixed", device).evaluate({}, spikes).counts
            if not torch.equal(ro, rec.counts):
                raise SystemExit("readout-only counts differ from the full network's")
        return SpikeDataset(spikes.numpy(), ds.labels.numpy(), BATCH, seed)

    backend = TorchSimBackend("loihi-fixed", device)
    backend.load(readout)
    stream = concat(
        hidden(data.adapt_train["clean"]), hidden(data.adapt_train["shifted"]), BATCH, seed + 1
    )
    return Task(
        "demo",
        backend,
        stream,
        {k: hidden(v) for k, v in data.validation.items()},
        {k: hidden(v, check=True) for k, v in data.test.items()},
        [2775, 11100] if quick else [11100, 22200, 44400],
    )


def all_weights_task(seed: int, quick: bool, progress: Progress, dataset: str = "digits") -> Task:
    """Every weight of an N_in-64-10 float network from its random start, on clean data."""
    split = load_split(dataset, seed)
    n_in = split.x_train.shape[1]
    sizes, steps = ([n_in, 32, 10], 8) if quick else ([n_in, 64, 10], 16)
    spec = NetworkSpec.random(
        sizes, steps, seed=seed, du=1.0, dv=0.1, vth=1.0, weight_gain=1.0,
        writable=("fc0.weight", "fc1.weight"),
    )  # fmt: skip
    cut = int(0.8 * len(split.y_train))

    def encode(x: Any, y: Any) -> SpikeDataset:
        return SpikeDataset(rate_encode(x, steps), y, BATCH, seed)

    backend = TorchSimBackend("float32", "cpu")
    backend.load(spec)
    progress(f"all-weights task, seed {seed}: network {sizes}")
    return Task(
        "all-weights",
        backend,
        encode(split.x_train[:cut], split.y_train[:cut]),
        {"clean": encode(split.x_train[cut:], split.y_train[cut:])},
        {"clean": encode(split.x_test, split.y_test)},
        [2560, 10240] if quick else [10240, 20480, 40960],
    )


MAKERS = {"demo": demo_task, "all-weights": all_weights_task}


# --------------------------------------------------------------------------- runs
def run_method(task: Task, settings: Settings, validated: bool = False) -> Run:
    """One method on one task up to its largest budget; test scores at each budget."""
    layout = make_layout(task.backend.spec, settings)
    x0 = layout.flatten(task.backend.spec)
    per_step = make_optimizer(settings, layout, x0, 1).num_candidates  # SPSA: 2
    budgets = sorted(task.budgets)
    steps = budgets[-1] // per_step
    run = Run(task.name, settings.optimizer, settings.seed, per_step)

    def at_budget(adapter: Adapter, record: dict[str, Any]) -> None:
        passes = record["evaluations"] // BATCH
        nxt = passes + per_step
        for budget in budgets[len(run.points) :]:
            if passes <= budget < nxt or record["step"] == steps:
                run.points.append(_flat(adapter, task, passes))

    adapter = Adapter.build(
        task.backend, task.train, steps=steps, settings=settings,
        validation=task.validation if validated else None, test=task.test,
        eval_every=10 if validated else 0, progress=False, on_step=at_budget,
    )  # fmt: skip
    result = adapter.run(steps)
    run.handed_back = dict(result.end)
    return run


def _flat(adapter: Adapter, task: Task, passes: int) -> dict[str, float]:
    scores: dict[str, Score] = {n: adapter.evaluate_current(d) for n, d in task.test.items()}
    out = {"passes": float(passes)}
    for name, sc in scores.items():
        out[f"{name}_accuracy"] = sc.accuracy
        out[f"{name}_loss"] = sc.loss
    return out


def run(
    tasks: list[str],
    seeds: list[int],
    methods: list[str],
    ablations: bool,
    quick: bool,
    progress: Progress,
    dataset: str = "digits",
    faster_start: bool = False,
) -> dict[str, Any]:
    runs: list[Run] = []
    ablation_runs: dict[str, dict[str, list[Run]]] = {}
    start_runs: dict[str, dict[str, list[Run]]] = {}
    starts: dict[str, list[dict[str, float]]] = {}
    torch.set_num_threads(1)
    for name in tasks:
        for seed in seeds:
            task = MAKERS[name](seed, quick, progress, dataset)
            starts.setdefault(name, []).append(_start(task))
            by_method: dict[str, Run] = {}
            for method in methods:
                progress(f"{name}, seed {seed}: {method}")
                by_method[method] = run_method(task, Settings(optimizer=method, seed=seed))
            runs += by_method.values()
            default = by_method.get("polystep")
            for label, change in ABLATIONS.items() if ablations else ():
                done = _variant(task, seed, change, name == "demo", default, progress,
                                f"{name}, seed {seed}: ablation {label}")  # fmt: skip
                ablation_runs.setdefault(name, {}).setdefault(label, []).append(done)
            for label, change in FASTER_START.items() if faster_start else ():
                done = _variant(task, seed, change, False, default, progress,
                                f"{name}, seed {seed}: {label}")  # fmt: skip
                start_runs.setdefault(name, {}).setdefault(label, []).append(done)
    return {
        "runs": runs, "ablations": ablation_runs, "faster_start": start_runs, "starts": starts,
        "seeds": seeds,
    }  # fmt: skip


def _variant(
    task: Task,
    seed: int,
    change: dict[str, Any],
    validated: bool,
    default: Run | None,
    progress: Progress,
    message: str,
) -> Run:
    """PolyStep with ``change``.  No change and no validation is ``default``, the method
    table's PolyStep run (same settings, and runs are deterministic), not run again."""
    if not change and not validated and default is not None:
        return default
    progress(message)
    return run_method(task, Settings(seed=seed, **change), validated=validated)


def _start(task: Task) -> dict[str, float]:
    from polystep_neuro.run.evaluation import score
    from polystep_neuro.run.losses import make_loss

    loss = make_loss("ce", task.backend.spec.num_steps, scale=0.5)
    out = {}
    for name, data in task.test.items():
        sc = score(task.backend, data, loss)
        out[f"{name}_accuracy"], out[f"{name}_loss"] = sc.accuracy, sc.loss
    return out


# --------------------------------------------------------------------------- report
def _median(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({', '.join(format(v, fmt) for v in values)})"


def tables(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    seeds = ", ".join(map(str, result["seeds"]))
    for task in TASKS:
        task_runs = [r for r in result["runs"] if r.task == task]
        if not task_runs:
            continue
        key = "shifted" if task == "demo" else "clean"
        start = result["starts"][task]
        lines += [
            f"**Task `{task}`** — start: {key} test accuracy "
            f"{_median([100 * s[key + '_accuracy'] for s in start], '.1f')} %, test loss "
            f"{_median([s[key + '_loss'] for s in start], '.3f')}",
            "",
            f"| forward passes (x B={BATCH}) | method | candidates / step | {key} test accuracy "
            f"| {key} test loss | loss / best baseline's |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        budgets = len(task_runs[0].points)
        for i in range(budgets):
            by_method: dict[str, list[Run]] = {}
            for r in task_runs:
                by_method.setdefault(r.method, []).append(r)
            loss = {
                m: statistics.median(r.points[i][f"{key}_loss"] for r in rs)
                for m, rs in by_method.items()
            }
            best = (_best_baseline(task_runs, i, key) or ("", float("nan")))[1]
            for method, rs in by_method.items():
                passes = int(statistics.median(r.points[i]["passes"] for r in rs))
                accs = [100 * r.points[i][f"{key}_accuracy"] for r in rs]
                losses = [r.points[i][f"{key}_loss"] for r in rs]
                lines.append(
                    f"| {passes:,} | {method} | {rs[0].candidates} | {_median(accs, '.1f')} % "
                    f"| {_median(losses, '.3f')} | {loss[method] / best:.2f}x |"
                )
        lines += [
            "",
            f"medians over seeds {seeds} (each seed's value in brackets); loss / best "
            "baseline's = the method's median test loss over the lowest median test loss of "
            "sep-CMA-ES, OpenAI-ES and SPSA at that budget (below 1x: better than every "
            "baseline)",
            "",
        ]
    if "demo" in result["ablations"]:
        lines += _demo_ablation_table(result)
    if "all-weights" in result["ablations"]:
        lines += _training_ablation_table(result)
    for task, variants in result.get("faster_start", {}).items():
        lines += _faster_start_table(result, task, variants)
    return lines


def _best_baseline(task_runs: list[Run], i: int, key: str) -> tuple[str, float] | None:
    """The baseline (not PolyStep) with the lowest median test loss at budget ``i`` among one
    task's runs, and that median; None when only PolyStep ran."""
    by_method: dict[str, list[float]] = {}
    for r in task_runs:
        if r.method != "polystep":
            by_method.setdefault(r.method, []).append(r.points[i][f"{key}_loss"])
    medians = [(m, statistics.median(losses)) for m, losses in by_method.items()]
    return min(medians, key=lambda ml: ml[1]) if medians else None


def _faster_start_table(
    result: dict[str, Any], task: str, variants: dict[str, list[Run]]
) -> list[str]:
    """Test loss at every budget of PolyStep variants that move faster early, and the best
    baseline's median at the same budget (from the same invocation's runs)."""
    key = "shifted" if task == "demo" else "clean"
    default = next(iter(variants.values()))
    passes = [f"{int(p['passes']):,}" for p in default[0].points]
    lines = [
        f"**PolyStep moving faster early, task `{task}`** ({key} test loss of the current "
        "point at each budget)",
        "",
        "| PolyStep | " + " | ".join(f"{p} passes" for p in passes) + " |",
        "|---|" + "---:|" * len(passes),
    ]
    for label, runs in variants.items():
        cells = [_median([r.points[i][f"{key}_loss"] for r in runs], ".3f") for i in
                 range(len(passes))]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    task_runs = [r for r in result["runs"] if r.task == task]
    best = [_best_baseline(task_runs, i, key) for i in range(len(passes))]
    if all(best):
        cells = [f"{loss:.3f} ({method})" for method, loss in best]
        lines.append("| best baseline (median) | " + " | ".join(cells) + " |")
    lines += ["", "medians over the seeds (each seed's value in brackets)", ""]
    return lines


def _passes(result: dict[str, Any], task: str) -> str:
    """The budget every ablation run of ``task`` spent (they all run the full budget)."""
    runs = next(iter(result["ablations"][task].values()))
    return f"{int(statistics.median(r.points[-1]['passes'] for r in runs)):,}"


def _demo_ablation_table(result: dict[str, Any]) -> list[str]:
    starts = result["starts"]["demo"]
    lines = [
        f"**PolyStep ablations, task `demo`** ({_passes(result, 'demo')} forward passes, "
        "keep-best on validation; "
        "recovered = share of the accuracy the shift took that the handed-back network gives "
        "back on the shifted test set)",
        "",
        "| PolyStep | recovered (handed back) | clean change (handed back) | shifted test loss "
        "(last point) |",
        "|---|---:|---:|---:|",
    ]
    for label, runs in result["ablations"]["demo"].items():
        rec, clean, loss = [], [], []
        for r, s in zip(runs, starts, strict=True):
            lost = s["clean_accuracy"] - s["shifted_accuracy"]
            rec.append(100 * (r.handed_back["shifted_accuracy"] - s["shifted_accuracy"]) / lost)
            clean.append(100 * (r.handed_back["clean_accuracy"] - s["clean_accuracy"]))
            loss.append(r.points[-1]["shifted_loss"])
        lines.append(
            f"| {label} | {_median(rec, '.0f')} % | {_median(clean, '+.1f')} | "
            f"{_median(loss, '.3f')} |"
        )
    lines += ["", "medians over the seeds (each seed's value in brackets)", ""]
    return lines


def _training_ablation_table(result: dict[str, Any]) -> list[str]:
    """The same switches on from-scratch training, where the step must grow, not shrink."""
    lines = [
        f"**PolyStep ablations, task `all-weights`** ({_passes(result, 'all-weights')} forward "
        "passes, last point)",
        "",
        "| PolyStep | clean test accuracy | clean test loss |",
        "|---|---:|---:|",
    ]
    for label, runs in result["ablations"]["all-weights"].items():
        accs = [100 * r.points[-1]["clean_accuracy"] for r in runs]
        losses = [r.points[-1]["clean_loss"] for r in runs]
        lines.append(f"| {label} | {_median(accs, '.1f')} % | {_median(losses, '.3f')} |")
    lines += ["", "medians over the seeds (each seed's value in brackets)", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--zoo" in argv:  # the task zoo (polystep_neuro.bench.zoo) takes its own options
        from polystep_neuro.bench import zoo

        return zoo.main([a for a in argv if a != "--zoo"])
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="--zoo (first or anywhere) runs the task zoo instead, with its own options: "
        "python -m polystep_neuro.bench.adapt_bench --zoo --help",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--methods", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument(
        "--faster-start", action="store_true", help="also PolyStep variants that move faster early"
    )
    args = parser.parse_args(argv)
    result = run(
        args.tasks, args.seeds, args.methods, not args.no_ablations, args.quick,
        lambda s: print(s, flush=True), args.dataset, args.faster_start,
    )  # fmt: skip
    print("\n".join(tables(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
