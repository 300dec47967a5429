"""A field stream for the watcher: clean, then corrupted, then clean again; then watch it.

``polystep-neuro watch`` needs a deployed network and a stream of its input batches.  This
script writes one from the digits test images (which the demo's network never trained on),
rate-coded for the network's own T: clean batches first (the watcher takes the first ones
as its reference), then the same images under a corruption of the suite, then clean again.
The labels go in the file too; the watcher never uses them, it only reports accuracy from
them.  Then it watches the stream through the API (``run_watch``, what the command runs)
and prints the events and the served and deployed networks' accuracy over the corrupted
stretch.

Run (after ``polystep-neuro demo``, whose network it watches by default; a minute or two)::

    python examples/05_field_stream.py                     # writes runs/field.npz, watches it
    python examples/05_field_stream.py --write-only        # only the stream, for the command:
    polystep-neuro watch --spec runs/demo/adapted_network.npz --stream runs/field.npz \\
        --out runs/watch
    python examples/05_field_stream.py --corruption rotate --spec net.npz
    python examples/05_field_stream.py --small             # seconds, for tests

The last line of output is a JSON summary (``summary: {...}``) for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.corruptions import CORRUPTIONS, Corruption
from polystep_neuro.run.data import encode, encode_drifted, load_split

BATCH = 32


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--spec",
        type=Path,
        default=Path("runs/demo/adapted_network.npz"),
        help="the deployed network (64 inputs: digits); default: the demo's",
    )
    p.add_argument("--out", type=Path, default=Path("runs/field.npz"), help="the stream file")
    p.add_argument("--corruption", default="fog", choices=sorted(CORRUPTIONS))
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument(
        "--batches",
        type=int,
        nargs=3,
        default=(60, 60, 30),
        metavar=("CLEAN", "CORRUPTED", "CLEAN_AGAIN"),
        help="batches of 32 each",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-only", action="store_true", help="write the stream, do not watch")
    p.add_argument("--small", action="store_true", help="tiny sizes: runs in seconds (tests)")
    return p.parse_args()


def write_stream(spec: NetworkSpec, args: argparse.Namespace) -> tuple[int, int]:
    """Clean, corrupted, clean batches of digits test images, drawn with replacement."""
    if spec.sizes[0] != 64:
        raise PolystepError(f"{args.spec} takes {spec.sizes[0]} inputs; this stream has 64")
    split = load_split("digits", args.seed)
    corruption = Corruption(args.corruption, args.severity, args.seed + 1)
    sets = (
        encode(split.x_test, spec.num_steps),
        encode_drifted(split.x_test, spec.num_steps, "rate", corruption),
        encode(split.x_test, spec.num_steps),
    )
    rng = np.random.default_rng(args.seed)
    spikes, labels = [], []
    for spikes_of, batches in zip(sets, args.batches, strict=True):
        index = rng.integers(0, len(split.y_test), size=batches * BATCH)
        spikes.append(spikes_of[index])
        labels.append(split.y_test[index])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, spikes=np.concatenate(spikes), labels=np.concatenate(labels))
    onset = args.batches[0]
    return onset, onset + args.batches[1]


def main() -> int:
    args = parse_args()
    if args.small:
        args.batches = (12, 12, 6)
    if not args.spec.exists():
        raise SystemExit(f"{args.spec} not found: run `polystep-neuro demo` first, or name --spec")
    spec = NetworkSpec.load(args.spec)
    onset, end = write_stream(spec, args)
    print(
        f"wrote {args.out}: {sum(args.batches)} batches of {BATCH} ({args.batches[0]} clean, "
        f"{args.batches[1]} {args.corruption} at severity {args.severity}, "
        f"{args.batches[2]} clean), T={spec.num_steps}"
    )
    summary: dict = {"stream": str(args.out), "onset": onset, "end": end}
    if not args.write_only:
        summary.update(watch(spec, args, onset, end))
    print("summary: " + json.dumps(summary))
    return 0


def watch(spec: NetworkSpec, args: argparse.Namespace, onset: int, end: int) -> dict:
    """The watcher over the stream, as `polystep-neuro watch` runs it (smaller under --small)."""
    from dataclasses import replace

    from polystep_neuro.run.streams import FileStream
    from polystep_neuro.run.watch import WatchConfig, run_watch
    from polystep_neuro.run.watch_log import read_log

    out_dir = args.out.with_suffix("")
    cfg = WatchConfig(torch_device="cpu", out_dir=out_dir / "watch")
    if args.small:
        cfg = replace(
            cfg, steps=10, adapt_samples=128, detector=replace(cfg.detector, reference_batches=8)
        )
    summary = run_watch(spec, FileStream(args.out, BATCH), cfg, print)
    batches, events = read_log(cfg.out_dir)
    corrupted = [b for b in batches if onset <= b["batch"] < end and "serving_accuracy" in b]
    drifts = [e["batch"] for e in events if e["event"] == "drift" and e["batch"] >= onset]
    served = float(np.mean([b["serving_accuracy"] for b in corrupted])) if corrupted else None
    deployed = float(np.mean([b["start_accuracy"] for b in corrupted])) if corrupted else None
    if served is not None:
        print(
            f"over the {args.corruption} stretch: served {served:.1%}, deployed "
            f"{deployed:.1%}; log and figure in {cfg.out_dir}"
        )
    return {
        "batches": summary["batches"],
        "events": summary["events"],
        "first_drift": drifts[0] if drifts else None,
        "served": served,
        "deployed": deployed,
    }


if __name__ == "__main__":
    raise SystemExit(main())
