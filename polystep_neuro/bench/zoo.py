"""The task zoo: PolyStep vs sep-CMA-ES / OpenAI-ES / SPSA at equal parameter sets on the
networks users bring, and PolyStep's ablations on them.

    python -m polystep_neuro.bench.adapt_bench --zoo [--tasks NAME ...] [--seeds 0 1 2]
        [--methods ...] [--variants ...] [--out runs/zoo/results.jsonl] [--report] [--quick]

The tasks are polystep_neuro.bench.zoo_tasks's (each marked ``tuned`` or ``held-out``).
Every method runs through :class:`~polystep_neuro.run.controller.Adapter` with the recipe's
defaults, as ``polystep-neuro adapt --optimizer NAME`` does: validation held out, the
anchor and writable set from ``run_defaults``, keep-best on validation.  A task's budget is
PolyStep's default steps times its candidates per step, in parameter sets evaluated on
one minibatch each (the anchor's extra set per step is not counted); every method gets the
same budget, so SPSA (2 sets per step) takes many more steps.  Test losses are of the
current point at a quarter, half and all of the budget; what the run hands back (keep-best
on validation) is scored too.  Time per step is CPU time (one torch thread), the median
over the run's steps, validation excluded.

Each finished run is appended to ``--out`` as one JSON line, and runs already there are
skipped, so seeds can run in separate processes and an interrupted zoo resumes;
``--report`` prints the tables of the files given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # `python -m polystep_neuro.bench.zoo`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from devices.registry import backend_options, open_backend  # noqa: E402
from polystep_neuro.bench import zoo_tasks  # noqa: E402
from polystep_neuro.bench.machine import describe  # noqa: E402
from polystep_neuro.bench.zoo_tasks import HELD_OUT, TASKS, TUNED, Built, Task  # noqa: E402
from polystep_neuro.core.network import NetworkSpec, split_param_name  # noqa: E402
from polystep_neuro.optim import optimizer_class  # noqa: E402
from polystep_neuro.run.controller import Adapter  # noqa: E402
from polystep_neuro.run.optimizers import Settings, make_layout  # noqa: E402
from simulators.param_groups import distinct_sets  # noqa: E402

METHODS = ("polystep", "sep-cma", "openai-es", "spsa")
BASELINES = METHODS[1:]
FRACTIONS = (0.25, 0.5, 1.0)  # of the budget, where the current point is scored
DEFAULT_OUT = Path("runs/zoo/results.jsonl")
DEFAULT_TIMING = Path("runs/zoo/timing.json")
# PolyStep's ablation rows: the default with one change (Settings fields).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "size-ranks": {"rank_rule": "size"},
    "sqrt-ranks": {"rank_rule": "sqrt"},
    "adam": {"update": "adam"},
    "rank": {"shaping": "rank"},
    "shift": {"shaping": "shift"},
    "tensor": {"shaping": "tensor"},
    "simplex": {"polytope": "simplex"},
    "two-point": {"block_dim": 1},
    "adan": {"update": "adan"},
    "torque": {"update": "torque"},
    "no-momentum": {"momentum": 0.0},
    "no-step-adapt": {"step_adapt": 0.0},
    "decay-0.3": {"final_step": 0.3},
    "decay-0.1": {"final_step": 0.1},
    "step-0.05": {"step": 0.05},
    "probe-0.25": {"probe": 0.25},
    "rank-32": {"rank": 32},
    "rank-16": {"rank": 16},
    "rank-128": {"rank": 128},
    "eps-0.5": {"epsilon": 0.5},
    "eps-2": {"epsilon": 2.0},
    "eps-4": {"epsilon": 4.0},
    "per-tensor": {"rank_rule": "equal"},
    "slow-evidence": {"step_adapt": 0.02},
    "adam-es": {"update": "adam", "step": 0.1, "step_adapt": 0.0},
    "adam-decay": {"update": "adam", "final_step": 0.1},
    "heavy-ball": {"update": "heavy-ball"},
    "average": {"average": 0.2},
    "average-step-0.2": {"average": 0.2, "step": 0.2},
    "average-step-0.25": {"average": 0.2, "step": 0.25},
    "low-rank-probes": {"low_rank_probes": True},
}
# What each variant changes, for the tables.
VARIANT_NOTES = {
    "default": "the default (one subspace over every tensor; Adam and ranks where weights move)",
    "size-ranks": "search coordinates shared among tensors in proportion to their size",
    "sqrt-ranks": "search coordinates shared by the square root of each tensor's size",
    "adam": "per-parameter normalisation of the step (Adam's moments on the direction)",
    "rank": "rank-based cost shaping (centred ranks over the batch) wherever PolyStep runs",
    "shift": "the costs shifted by their minimum, no ranks (the default until shaping auto)",
    "tensor": "per-tensor cost normalisation (each tensor's blocks by their own scale)",
    "simplex": "one-sided probes, no antithetic pairs (simplex: 3 per 2-D block; FZOO-like)",
    "two-point": "two-point probes per coordinate (blocks of 1: +-1, MeZO-like)",
    "adan": "Adan's Nesterov momentum estimate",
    "torque": "torque-aware momentum (a move damped by its angle to the velocity)",
    "no-momentum": "no momentum",
    "no-step-adapt": "the step does not follow the evidence (step_adapt 0)",
    "decay-0.3": "a half-cosine decay of the step to 30 % by the last step",
    "decay-0.1": "a half-cosine decay of the step to 10 % by the last step",
    "step-0.05": "a third of the default initial step (0.05 probe units per step)",
    "probe-0.25": "probes of a quarter of each tensor's typical magnitude (default: half)",
    "rank-32": "32 search coordinates per tensor (default 64): half the sets, twice the steps",
    "rank-16": "16 search coordinates per tensor: a quarter of the sets per step, 4x the steps",
    "rank-128": "128 search coordinates per tensor: more sets per step, fewer steps",
    "eps-0.5": "half the softmax temperature on the normalised costs (sharper vertex weights)",
    "eps-2": "twice the softmax temperature (softer vertex weights)",
    "eps-4": "four times the softmax temperature",
    "per-tensor": "each tensor through its own subspace (a set probes one tensor; the old default)",
    "slow-evidence": "the step follows the evidence at 0.02 instead of 0.05",
    "adam-es": "Adam at OpenAI-ES's constant 0.1 probe units a step, no evidence rule",
    "adam-decay": "Adam, its step decayed on a half cosine to a tenth by the last step",
    "heavy-ball": "heavy-ball momentum wherever weights move too (the default until auto)",
    "average": "the mean of the points of the last fifth of the steps reported, not the last",
    "average-step-0.2": "that mean, the step 0.2 probe units (default 0.15)",
    "average-step-0.25": "that mean, the step 0.25 probe units",
    "low-rank-probes": "first-layer directions as outer products (rank-2 probes)",
}
ABLATIONS = ("size-ranks", "sqrt-ranks", "adam", "rank", "tensor", "simplex", "two-point",
             "adan", "torque")  # fmt: skip

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- runs
def settings_for(built: Built, method: str, change: Mapping[str, Any] | None = None) -> Settings:
    """The recipe's settings of ``method`` on ``built`` (the quick zoo's rank), ``change``d."""
    rank = {} if built.rank is None else {"rank": built.rank}
    return Settings(optimizer=method, seed=built.seed, **{**rank, **(change or {})})


def budget_of(built: Built) -> int:
    """The task's budget in parameter sets: PolyStep's default steps x its candidates."""
    default = settings_for(built, "polystep")
    sizes = make_layout(built.spec, default).sizes
    polystep = optimizer_class("polystep")
    return built.task.steps * polystep.candidates_for(sizes, **default.options_for(polystep, sizes))


def run_one(built: Built, method: str, variant: str, change: Mapping[str, Any]) -> dict[str, Any]:
    """One method (PolyStep with ``change`` for a variant) on one built task."""
    task, seed = built.task, built.seed
    settings = settings_for(built, method, change)
    backend = open_backend(task.backend, **backend_options(task.backend, device="cpu"))
    try:
        backend.load(built.spec)
        spec = backend.spec  # calibrated on a fixed-point device
        cls = optimizer_class(method)
        sizes = make_layout(spec, settings).sizes
        per_step = cls.candidates_for(sizes, **settings.options_for(cls, sizes))
        budget = budget_of(built)
        steps = max(1, budget // per_step)
        marks = {min(steps, max(1, round(f * budget / per_step))): f for f in FRACTIONS}
        points: list[dict[str, float]] = []
        cpu: list[tuple[bool, float]] = []  # (validated, CPU seconds) per step
        last = [time.process_time()]

        def on_step(adapter: Adapter, record: dict[str, Any]) -> None:
            now = time.process_time()
            cpu.append(("val_accuracy" in record, now - last[0]))
            if record["step"] in marks:
                point = {"fraction": marks[record["step"]], "passes": record["step"] * per_step}
                for name, data in built.test.items():
                    sc = adapter.evaluate_current(data)
                    point[f"{name}_loss"], point[f"{name}_accuracy"] = sc.loss, sc.accuracy
                points.append(point)
            last[0] = time.process_time()

        adapter = Adapter.build(
            backend, built.stream, steps=steps, settings=settings, names=spec.writable,
            validation=built.validation, test=built.test, anchor_weight=built.anchor,
            eval_every=max(1, steps // 10), progress=False, on_step=on_step,
        )  # fmt: skip
        start = time.perf_counter()
        result = adapter.run(steps)
        wall = time.perf_counter() - start
    finally:
        backend.close()
    walls = [r["step_seconds"] for r in result.history if "step_seconds" in r]
    plain = [seconds for validated, seconds in cpu if not validated] or [s for _, s in cpu]
    return {
        "task": task.name, "half": task.half, "seed": seed, "method": method,
        "variant": variant, "candidates": per_step, "steps": steps, "budget": budget,
        "points": points, "start": result.start, "end": result.end,
        "best_step": result.best_step, "cpu_step": statistics.median(plain),
        "wall_step": statistics.median(walls) if walls else math.nan, "seconds": wall,
    }  # fmt: skip


def layer_sets(spec: NetworkSpec, params: Mapping[str, torch.Tensor]) -> int:
    """(parameter set, layer) pairs the simulator computes for one batch: a layer runs once
    per distinct combination of the sets' values up to it (simulators.param_groups), so
    sets that differ only in a later layer share the earlier layers' spikes."""
    num_sets = next(iter(params.values())).shape[0]
    group = torch.zeros(num_sets, dtype=torch.long)
    groups, total = 1, 0
    for i in range(len(spec.layers)):
        varied = [params[n].float() for n in sorted(params) if split_param_name(n)[0] == i]
        if varied:
            rep, group = distinct_sets(group, varied)
            groups = rep.numel()
        total += groups
    return total


def time_steps(
    built: Built, methods: Iterable[str], rounds: int = 4, chunk: int = 4
) -> dict[str, dict[str, float]]:
    """Time per step of each method on one task, measured side by side: one Adapter per
    method (the run's recipe, anchor included, no validation), ``chunk`` steps of each in
    turn for ``rounds`` rounds (the first is warm-up), so the machine's load falls on every
    method alike.  CPU seconds between the ends of consecutive steps within a chunk, wall
    seconds of every step (the loop's own ``step_seconds``); medians."""
    task = built.task
    backend = open_backend(task.backend, **backend_options(task.backend, device="cpu"))
    out: dict[str, dict[str, float]] = {}
    try:
        backend.load(built.spec)
        ends: dict[str, list[float]] = {}

        def ender(m: str) -> Callable[[Adapter, dict[str, Any]], None]:
            return lambda adapter, record: ends[m].append(time.process_time())

        adapters = {}
        for m in methods:
            ends[m] = []
            adapters[m] = Adapter.build(
                backend, built.stream, steps=rounds * chunk, settings=settings_for(built, m),
                names=backend.spec.writable, anchor_weight=built.anchor, eval_every=0,
                progress=False, on_step=ender(m),
            )  # fmt: skip
        cpu: dict[str, list[float]] = {m: [] for m in adapters}
        for r in range(rounds):
            for m, adapter in adapters.items():
                ends[m].clear()
                adapter.run((r + 1) * chunk)
                if r > 0:
                    cpu[m] += [b - a for a, b in zip(ends[m], ends[m][1:], strict=False)]
        for m, adapter in adapters.items():
            timed = [r for r in adapter.history if "step_seconds" in r][chunk:]
            asked = adapter.layout.unflatten(adapter.optimizer.ask())
            out[m] = {
                "cpu": statistics.median(cpu[m]),
                "wall": statistics.median(r["step_seconds"] for r in timed),
                "candidates": adapter.optimizer.num_candidates,
                "layer_sets": layer_sets(backend.spec, asked),
            }
    finally:
        backend.close()
    return out


def run_timing(
    tasks: Iterable[Task], out: Path, quick: bool = False, progress: Progress = print
) -> dict[str, dict[str, dict[str, float]]]:
    """``time_steps`` of every method on each task (seed 0), written to ``out`` (JSON)."""
    torch.set_num_threads(1)
    timing = load_timing(out) if out.exists() else {}
    for task in tasks:
        if task.name in timing:
            continue
        progress(f"{task.name}: time per step, every method in turn")
        timing[task.name] = time_steps(zoo_tasks.build(task, 0, quick), METHODS)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(timing, indent=1), encoding="utf-8")
    return timing


def load_timing(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _done(path: Path) -> set[tuple[str, int, str, str]]:
    return {(r["task"], r["seed"], r["method"], r["variant"]) for r in load([path])}


def run(
    tasks: Iterable[Task],
    seeds: Iterable[int],
    methods: Iterable[str],
    variants: Iterable[str],
    out: Path,
    quick: bool = False,
    progress: Progress = print,
) -> list[dict[str, Any]]:
    """Every method and PolyStep variant on every task and seed; records appended to
    ``out`` (runs already there skipped).  Returns the records of this call."""
    torch.set_num_threads(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out) if out.exists() else set()
    methods, variants = list(methods), list(variants)
    jobs = [(m, "default", {}) for m in methods]
    if "default" in variants and "polystep" not in methods:  # PolyStep as it ships
        jobs.append(("polystep", "default", {}))
    jobs += [("polystep", v, VARIANTS[v]) for v in variants if v != "default"]
    records = []
    for task in tasks:
        for seed in seeds:
            todo = [j for j in jobs if (task.name, seed, j[0], j[1]) not in done]
            if not todo:
                continue
            built = zoo_tasks.build(task, seed, quick)
            for method, variant, change in todo:
                label = method if variant == "default" else f"polystep [{variant}]"
                progress(f"{task.name}, seed {seed}: {label}")
                record = run_one(built, method, variant, change)
                records.append(record)
                with open(out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
    return records


def load(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Records of one or more result files (the last record of a run wins)."""
    by_key: dict[tuple[str, int, str, str], dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                by_key[(r["task"], r["seed"], r["method"], r["variant"])] = r
    return list(by_key.values())


# --------------------------------------------------------------------------- report
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _loss(record: dict[str, Any], key: str, fraction: float) -> float:
    for point in record["points"]:
        if point["fraction"] == fraction:
            return point[f"{key}_loss"]
    return math.nan


class Zoo:
    """The records grouped by task, method and variant (medians over seeds)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.tasks = [t for t in TASKS if any(r["task"] == t.name for r in records)]
        self.tasks += [
            _unknown(name)
            for name in sorted({r["task"] for r in records} - {t.name for t in TASKS})
        ]

    def runs(self, task: str, method: str, variant: str = "default") -> list[dict[str, Any]]:
        rs = [r for r in self.records if r["task"] == task and r["method"] == method]
        return sorted((r for r in rs if r["variant"] == variant), key=lambda r: r["seed"])

    def loss(self, task: Task, method: str, fraction: float, variant: str = "default") -> float:
        return _median([_loss(r, task.key, fraction) for r in self.runs(task.name, method,
                                                                         variant)])  # fmt: skip

    def best_baseline(self, task: Task, fraction: float) -> tuple[str, float]:
        losses = [(m, self.loss(task, m, fraction)) for m in BASELINES if self.runs(task.name, m)]
        losses = [(m, v) for m, v in losses if not math.isnan(v)]
        return min(losses, key=lambda mv: mv[1]) if losses else ("-", math.nan)


def _unknown(name: str) -> Task:
    return Task(name, "?", zoo_tasks.DIGITS_LEAKY, "?", "?", "?", 0)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def method_table(zoo: Zoo, variant: str = "default") -> list[str]:
    lines = [
        "| task | half | network, writable, data, device | PolyStep loss at 1/4, 1/2, all of "
        "the budget | best baseline's (which) | PolyStep / best at 1/2 | at all |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for task in zoo.tasks:
        ps = [zoo.loss(task, "polystep", f, variant) for f in FRACTIONS]
        best = [zoo.best_baseline(task, f) for f in FRACTIONS]
        what = f"{task.net.label}, {task.writable}, {task.data}, {task.backend}"
        lines.append(
            f"| {task.name} | {task.half} | {what} | "
            + " / ".join(f"{v:.3f}" for v in ps)
            + " | "
            + " / ".join(f"{v:.3f} ({m})" for m, v in best)
            + f" | {_ratio(ps[1], best[1][1])} | {_ratio(ps[2], best[2][1])} |"
        )
    return lines


def goal_summary(zoo: Zoo, variant: str = "default") -> list[str]:
    """Per half and in all: tasks where PolyStep's median loss <= the best baseline's."""
    lines = [
        "| tasks | PolyStep <= best baseline, all of the budget | at half the budget "
        "| worst PolyStep / best |",
        "|---|---:|---:|---:|",
    ]
    for label, half in (("tuned", TUNED), ("held-out", HELD_OUT), ("all", None)):
        tasks = [t for t in zoo.tasks if half is None or t.half == half]
        if not tasks:
            continue
        cells = []
        ratios: list[float] = []
        for f in (1.0, 0.5):
            wins = 0
            for task in tasks:
                ratio = zoo.loss(task, "polystep", f, variant) / zoo.best_baseline(task, f)[1]
                wins += ratio <= 1.0
                ratios.append(ratio)
            cells.append(f"{wins} of {len(tasks)} ({100 * wins / len(tasks):.0f} %)")
        worst = max((r for r in ratios if not math.isnan(r)), default=math.nan)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {worst:.2f}x |")
    return lines


def replay_table(zoo: Zoo, methods: Iterable[str] = METHODS) -> list[str]:
    """What the network handed back keeps of clean accuracy, and gains on the drift."""
    methods = [m for m in methods if any(r["method"] == m for r in zoo.records)]
    lines = [
        "| task | half | clean test accuracy at the start | "
        + " | ".join(f"{m}: clean / shifted change" for m in methods)
        + " |",
        "|---|---|---:|" + "---:|" * len(methods),
    ]
    for task in zoo.tasks:
        if task.data not in ("replay", "drifted"):
            continue
        runs = zoo.runs(task.name, "polystep")
        start = _median([100 * r["start"]["clean_accuracy"] for r in runs])
        cells = []
        for m in methods:
            rs = zoo.runs(task.name, m)
            clean = _median([100 * (r["end"]["clean_accuracy"] - r["start"]["clean_accuracy"])
                             for r in rs])  # fmt: skip
            shifted = _median([100 * (r["end"]["shifted_accuracy"]
                                      - r["start"]["shifted_accuracy"]) for r in rs])  # fmt: skip
            cells.append(f"{clean:+.1f} / {shifted:+.1f}")
        lines.append(f"| {task.name} ({task.data}) | {task.half} | {start:.1f} % | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return lines


def time_table(timing: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """Time per step of each method, measured side by side (``time_steps``)."""
    lines = [
        "| task | PolyStep ms / step (CPU, wall) | sep-CMA-ES | OpenAI-ES | SPSA (2 sets) "
        "| sep-CMA-ES / PolyStep (CPU, wall) | OpenAI-ES / PolyStep | (set, layer) pairs "
        "simulated, OpenAI-ES / PolyStep | SPSA ms per set |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task in TASKS:
        t = timing.get(task.name)
        if not t or any(m not in t for m in METHODS):
            continue
        ms = {m: f"{1e3 * t[m]['cpu']:.1f}, {1e3 * t[m]['wall']:.1f}" for m in METHODS}
        ratio = {
            m: ", ".join(_ratio(t[m][k], t["polystep"][k]) for k in ("cpu", "wall"))
            for m in BASELINES
        }
        lines.append(
            f"| {task.name} | {ms['polystep']} | {ms['sep-cma']} | {ms['openai-es']} "
            f"| {ms['spsa']} | {ratio['sep-cma']} | {ratio['openai-es']} "
            f"| {t['openai-es']['layer_sets']:,} / {t['polystep']['layer_sets']:,} = "
            f"{_ratio(t['openai-es']['layer_sets'], t['polystep']['layer_sets'])} "
            f"| {1e3 * t['spsa']['cpu'] / t['spsa']['candidates']:.2f} |"
        )
    return lines


def ablation_table(zoo: Zoo, variants: Iterable[str]) -> list[str]:
    """Per variant and half: the geometric mean of its median loss over the default's, and
    the tasks where it is <= the best baseline, at half and all of the budget."""
    lines = [
        "| PolyStep | half | tasks | loss / default's (geo. mean), 1/2 and all of the budget "
        "| <= best baseline at 1/2 | at all |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for variant in variants:
        for half in (TUNED, HELD_OUT):
            tasks = [t for t in zoo.tasks if t.half == half and zoo.runs(t.name, "polystep",
                                                                         variant)]  # fmt: skip
            if not tasks:
                continue
            geo, wins = [], []
            for f in (0.5, 1.0):
                logs = [math.log(zoo.loss(t, "polystep", f, variant)
                                 / zoo.loss(t, "polystep", f)) for t in tasks]  # fmt: skip
                geo.append(math.exp(statistics.fmean(logs)))
                wins.append(sum(zoo.loss(t, "polystep", f, variant)
                                <= zoo.best_baseline(t, f)[1] for t in tasks))  # fmt: skip
            lines.append(
                f"| {variant} | {half} | {len(tasks)} | {geo[0]:.3f} / {geo[1]:.3f} "
                f"| {wins[0]} | {wins[1]} |"
            )
    return lines


def tables(
    records: list[dict[str, Any]],
    variants: Iterable[str] = (),
    timing: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> list[str]:
    zoo = Zoo(records)
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"{describe(gpu=False)}; medians over seeds "
        f"{', '.join(map(str, seeds))}; loss = the task's test loss (shifted test set; clean "
        "when training from scratch) of the current point",
        "",
        *method_table(zoo),
        "",
        *goal_summary(zoo),
        "",
        "Clean and shifted test accuracy of the network handed back (keep-best on "
        "validation) minus the start's, points:",
        "",
        *replay_table(zoo),
    ]
    if timing:
        lines += ["", *time_table(timing)]
    variants = [v for v in variants if any(r["variant"] == v for r in records)]
    if len(variants) > 1:
        lines += ["", *ablation_table(zoo, variants)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [t.name for t in TASKS]
    parser.add_argument("--tasks", nargs="+", default=names, choices=names)
    parser.add_argument("--half", choices=(TUNED, HELD_OUT), help="only this half's tasks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", nargs="*", type=Path, help="only print the tables of these")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument(
        "--timing", type=Path, nargs="?", const=DEFAULT_TIMING, default=None,
        help=f"also time every method's steps side by side (JSON; default {DEFAULT_TIMING})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.report is None and not args.methods and not args.variants:
        parser.error("nothing to run: name --methods, --variants (default: PolyStep as it "
                     "ships) or both")  # fmt: skip
    tasks = [zoo_tasks.BY_NAME[n] for n in args.tasks]
    if args.half:
        tasks = [t for t in tasks if t.half == args.half]
    say = lambda s: print(s, flush=True)  # noqa: E731
    timing = None
    if args.report is not None:
        records = load(args.report or [args.out])
        if args.timing is not None and args.timing.exists():
            timing = load_timing(args.timing)
    else:
        run(tasks, args.seeds, args.methods, args.variants, args.out, args.quick, say)
        records = load([args.out])
        if args.timing is not None:
            timing = run_timing(tasks, args.timing, args.quick, progress=say)
    names_run = {t.name for t in tasks}
    records = [r for r in records if r["task"] in names_run and r["seed"] in args.seeds]
    print("\n".join(tables(records, ["default", *args.variants], timing)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
