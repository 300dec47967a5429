"""The stream watcher over streams that are clean, then corrupted, then clean again.

    python -m polystep_neuro.bench.watch_bench [--seeds 0 1 2] [--corruptions NAME ...]
        [--clean-batches 2000] [--no-class-mixes] [--json rows.json]

A 64-32-10 snnTorch network (as in the label-free bench) is deployed on torch-sim-fixed and
watched with `polystep-neuro watch`'s defaults, batches of 32 samples drawn from the digits
test images.  False alarms: one long clean stream per seed, drift events counted after the
reference batches; and clean streams whose class mix shifts (`CLASS_MIXES`).  Per
corruption (severity 3): 100 clean batches, 150 corrupted, 100 clean; the detection delay
(batches from the onset to the drift event), whether the watcher adapted or rolled back,
and, over the corrupted stretch after the first adaptation, the accuracy of the served
network beside the deployed one's (from labels the watcher never reads).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from polystep_neuro.bench.labelfree_bench import HELD_OUT, TIME_STEPS, TUNED, train_model  # noqa: E402
from polystep_neuro.run.corruptions import Corruption  # noqa: E402
from polystep_neuro.run.data import encode, encode_drifted, load_split  # noqa: E402

BATCH = 32
STRETCHES = (100, 150, 100)  # clean, corrupted, clean batches
# Clean streams whose class mix shifts for the middle stretch (no drift of the inputs): any
# alarm there is a false one, and adapting to it costs accuracy.  The classes drawn, or
# ("half", c): half the samples of class c, the rest of every class.
CLASS_MIXES: dict[str, tuple] = {
    "classes 0-2 only": (0, 1, 2),
    "classes 0-4 only": (0, 1, 2, 3, 4),
    "half of them 7s": ("half", 7),
}


@dataclass(frozen=True)
class Row:
    seed: int
    corruption: str  # "clean" for the false-alarm stream
    batches: int
    drifts: int  # drift events (false alarms on the clean stream)
    delay: int | None  # batches from the corruption's onset to the first drift event
    adapted: int
    rolled_back: int
    cleared_after: int | None  # batches from the corruption's end to the cleared event
    served: float | None  # accuracy over the corrupted stretch after the first adaptation
    deployed: float | None  # the deployed network's over the same batches


def _draw(spikes: np.ndarray, labels: np.ndarray, batches: int, rng: np.random.Generator):
    idx = rng.integers(0, len(labels), size=batches * BATCH)
    return spikes[idx], labels[idx]


def _draw_mix(spikes: np.ndarray, labels: np.ndarray, batches: int, rng: np.random.Generator,
              mix: tuple) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Clean samples of a shifted class mix (:data:`CLASS_MIXES`)."""
    n = batches * BATCH
    if mix[0] == "half":
        one = np.flatnonzero(labels == mix[1])
        idx = np.where(rng.random(n) < 0.5, rng.choice(one, n), rng.integers(0, len(labels), n))
    else:
        idx = rng.choice(np.flatnonzero(np.isin(labels, mix)), n)
    return spikes[idx], labels[idx]


def _stretches(
    clean: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    middle: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """A stream of :data:`STRETCHES`: clean batches, ``middle(batches, rng)`` (drawn in
    between, so the draws come in stream order), clean batches again."""
    parts = [
        _draw(clean, labels, STRETCHES[0], rng),
        middle(STRETCHES[1], rng),
        _draw(clean, labels, STRETCHES[2], rng),
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _watch(spec, spikes, labels, out: Path, seed: int):
    from polystep_neuro.run.optimizers import Settings
    from polystep_neuro.run.streams import FileStream
    from polystep_neuro.run.watch import WatchConfig, run_watch
    from polystep_neuro.run.watch_log import read_log

    out.mkdir(exist_ok=True)
    np.savez(out / "stream.npz", spikes=spikes, labels=labels)
    cfg = WatchConfig(torch_device="cpu", settings=Settings(seed=seed), out_dir=out / "watch")
    run_watch(spec, FileStream(out / "stream.npz", BATCH), cfg)
    return read_log(cfg.out_dir)


def run_seed(
    seed: int,
    corruptions: Sequence[str],
    clean_batches: int,
    progress: Callable[[str], None],
    class_mixes: bool = True,
) -> list[Row]:
    from polystep_neuro.run.interop import from_snntorch, to_device_semantics

    split = load_split("digits", seed)
    model = train_model("digits", seed, encode(split.x_train, TIME_STEPS), split.y_train)
    spec, _ = to_device_semantics(from_snntorch(model, TIME_STEPS))
    clean = encode(split.x_test, TIME_STEPS)
    rng = np.random.default_rng([seed, 5])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if clean_batches:
            spikes, labels = _draw(clean, split.y_test, clean_batches, rng)
            batches, events = _watch(spec, spikes, labels, Path(tmp), seed)
            drifts = sum(e["event"] == "drift" for e in events)
            rows.append(Row(seed, "clean", len(batches), drifts, None, 0, 0, None, None, None))
            progress(f"seed {seed}: {drifts} drift events in {len(batches)} clean batches")
        for name, mix in CLASS_MIXES.items() if class_mixes else ():
            middle = functools.partial(_draw_mix, clean, split.y_test, mix=mix)
            stream = _stretches(clean, split.y_test, rng, middle)
            batches, events = _watch(spec, *stream, Path(tmp) / name.replace(" ", "-"), seed)
            drifts = sum(e["event"] == "drift" for e in events)
            adapted = sum(e["event"] == "adapted" for e in events)
            rows.append(Row(seed, f"class mix: {name}", len(batches), drifts, None, adapted,
                            0, None, None, None))  # fmt: skip
            progress(f"seed {seed} {name}: {drifts} drift events in {len(batches)} batches")
        for name in corruptions:
            drifted = encode_drifted(
                split.x_test, TIME_STEPS, "rate", Corruption(name, 3, seed + 1)
            )
            middle = functools.partial(_draw, drifted, split.y_test)
            stream = _stretches(clean, split.y_test, rng, middle)
            batches, events = _watch(spec, *stream, Path(tmp) / name, seed)
            rows.append(_row(seed, name, batches, events))
            r = rows[-1]
            progress(
                f"seed {seed} {name}: delay {r.delay}, adapted {r.adapted}, rolled back "
                f"{r.rolled_back}, served {r.served}, deployed {r.deployed}"
            )
    return rows


def _row(seed: int, name: str, batches: list[dict], events: list[dict]) -> Row:
    onset, end = STRETCHES[0], STRETCHES[0] + STRETCHES[1]
    drifts = [e["batch"] for e in events if e["event"] == "drift"]
    after = [d for d in drifts if d >= onset]
    adapted = [e["batch"] for e in events if e["event"] == "adapted" and onset <= e["batch"] < end]
    cleared = [e["batch"] for e in events if e["event"] == "cleared" and e["batch"] >= end]
    served = deployed = None
    if adapted:
        stretch = [b for b in batches if adapted[0] < b["batch"] < end]
        served = float(np.mean([b["serving_accuracy"] for b in stretch])) if stretch else None
        deployed = float(np.mean([b["start_accuracy"] for b in stretch])) if stretch else None
    return Row(
        seed,
        name,
        len(batches),
        len(drifts),
        after[0] - onset if after else None,
        len(adapted),
        sum(e["event"] == "rolled_back" for e in events),
        cleared[0] - end if cleared else None,
        served,
        deployed,
    )


def table(rows: list[Row]) -> list[str]:
    clean = [r for r in rows if r.corruption == "clean"]
    lines = []
    if clean:
        batches = sum(r.batches for r in clean)
        alarms = sum(r.drifts for r in clean)
        lines.append(
            f"False alarms on clean streams: {alarms} drift events in {batches} batches "
            f"({1000 * alarms / batches:.2f} per 1,000 batches; {len(clean)} seeds)."
        )
        lines.append("")
    mixes = [r for r in rows if r.corruption.startswith("class mix: ")]
    if mixes:
        alarms, adapted = sum(r.drifts for r in mixes), sum(r.adapted for r in mixes)
        lines.append(
            f"False alarms on clean streams whose class mix shifts ({', '.join(CLASS_MIXES)} "
            f"for {STRETCHES[1]} batches): {alarms} drift events, {adapted} adaptations in "
            f"{len(mixes)} streams."
        )
        lines.append("")
    lines += [
        "| corruption | half | detected (seeds) | delay, batches (median) | adapted / rolled "
        "back | cleared after, batches | corrupted stretch: served vs deployed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    drifts = (r.corruption for r in rows if r.corruption != "clean" and r not in mixes)
    for name in dict.fromkeys(drifts):
        mine = [r for r in rows if r.corruption == name]
        delays = [r.delay for r in mine if r.delay is not None]
        cleared = [r.cleared_after for r in mine if r.cleared_after is not None]
        pairs = [(r.served, r.deployed) for r in mine if r.served is not None]
        acc = (
            f"{100 * statistics.mean(p[0] for p in pairs):.1f} vs "
            f"{100 * statistics.mean(p[1] for p in pairs):.1f} %"
            if pairs
            else "not adapted"
        )
        lines.append(
            f"| {name} | {'tuned' if name in TUNED else 'held out'} | {len(delays)} of "
            f"{len(mine)} | {statistics.median(delays) if delays else '-'} | "
            f"{sum(r.adapted for r in mine)} / {sum(r.rolled_back for r in mine)} | "
            f"{statistics.median(cleared) if cleared else '-'} | {acc} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corruptions", nargs="+", default=[*TUNED, *HELD_OUT])
    parser.add_argument("--clean-batches", type=int, default=2000)
    parser.add_argument("--no-class-mixes", action="store_true",
                        help="leave out the clean streams whose class mix shifts")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[Row] = []
    for seed in args.seeds:
        rows += run_seed(seed, args.corruptions, args.clean_batches,
                         lambda s: print(s, file=sys.stderr), not args.no_class_mixes)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1), encoding="utf-8")
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
