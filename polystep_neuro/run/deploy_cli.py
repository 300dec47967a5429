"""``polystep-neuro check`` and ``polystep-neuro deploy``: how far a deployed network is from
the trained model, layer by layer, and the one command that puts it on the device and wins
the difference back (:mod:`polystep_neuro.run.parity`, :mod:`polystep_neuro.run.deploy`).

Every expected failure is a ``PolystepError`` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from polystep_neuro.core.errors import Interrupted, PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim.subspace import RANK_RULES
from polystep_neuro.run.cli_args import add_adapt_switch, add_backend, add_torch_device, named_path
from polystep_neuro.run.convert import add_model_arguments, read_model
from polystep_neuro.run.optimizers import SHAPING_CHOICES, UPDATES, Settings
from polystep_neuro.run.reference import Reference


def add_parsers(sub: Any) -> None:
    """The ``check`` and ``deploy`` subcommands, on cli's subparsers object."""
    _add_check(sub)
    _add_deploy(sub)


def _add_check(sub: Any) -> None:
    """`polystep-neuro check`."""
    check = sub.add_parser(
        "check",
        help="a deployed network against the trained model, layer by layer, on any backend",
        description="Run data through the trained model (its own semantics, float32, "
        "on this host) and through the device network on a backend; report per layer how many "
        "spike counts agree, the rate difference and where they first diverge, how often the "
        "two decide the same, and both outputs' accuracy when the file holds labels (a table, "
        "and summary.json in --out).  The device network is the model converted for "
        "--backend, or --device-spec.",
    )
    add_model_arguments(check, required=True)
    check.add_argument(
        "--device-spec",
        type=Path,
        metavar="FILE",
        help="the device network to check (e.g. a converted or adapted .npz; default: the "
        "model converted for --backend)",
    )
    _common(check, default_out="runs/check")
    check.add_argument(
        "--samples", type=int, help="check only the first N samples of --data (default: all)"
    )


def _add_deploy(sub: Any) -> None:
    """`polystep-neuro deploy`: the data it reads, then how it recovers."""
    deploy = sub.add_parser(
        "deploy",
        help="put a trained model on a device and adapt it back towards itself (forward "
        "passes only)",
        description="Convert the model for --backend, then recover the accuracy the "
        "conversion cost: a per-neuron calibration against the model's own spike counts on "
        "--data (and, where validation is then still 2 or more points below the model, or "
        "always with --adapt, PolyStep adaptation with the model's outputs as soft targets "
        "and the labels when the file has them).  A fifth of --data is held out for "
        "validation: the network handed back is never less accurate on it than the "
        "converted one.  Writes config.json (the files it read), converted.npz, adapted.npz, "
        "summary.json, metrics.jsonl and checkpoint.pt.",
    )
    add_model_arguments(deploy, required=True)
    _common(deploy, default_out="runs/deploy")
    _add_deploy_data(deploy)
    _add_deploy_stages(deploy)
    deploy.add_argument("--seed", type=int, default=0,
                        help="seed of the split and probes (default: 0)")  # fmt: skip
    deploy.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    deploy.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_deploy_data(deploy: argparse.ArgumentParser) -> None:
    """`deploy`: the data besides --data (validation, test and drifted sets)."""
    deploy.add_argument("--val", type=Path, help="validation data (default: held out of --data)")
    deploy.add_argument(
        "--test",
        type=named_path,
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a held-out labelled test set, scored before and after (repeat for several)",
    )
    deploy.add_argument(
        "--drifted",
        type=Path,
        help="data the device sees now (e.g. a drifted sensor): joins the stream with the "
        "model's outputs on it as targets",
    )


def _add_deploy_stages(deploy: argparse.ArgumentParser) -> None:
    """`deploy`: the budget, and which recovery stages run on what."""
    deploy.add_argument(
        "--budget",
        type=int,
        default=50_000,
        help="most parameter sets sent to the device, each scored on one minibatch, for the "
        "calibration and the adaptation together (default: 50000; the calibration takes "
        "13 x 13 per layer on each minibatch of its samples, at most 4: 676 per layer)",
    )
    deploy.add_argument(
        "--no-calibration", action="store_true", help="skip the per-neuron calibration stage"
    )
    deploy.add_argument(
        "--no-output-copies",
        action="store_true",
        help="keep one output neuron a class (by default each is doubled, a class counted "
        "over both, where that does not lower validation accuracy: it splits the ties the "
        "device's coarser counts make)",
    )
    add_adapt_switch(
        deploy,
        always="after the calibration, always adapt every weight and neuron bias with PolyStep "
        "towards the model's outputs, within --budget (default: only where the calibrated "
        "network is still 2 or more points below the trained model on validation)",
        never="never run the adaptation stage (calibration and output copies only)",
    )
    deploy.add_argument(
        "--writable",
        nargs="+",
        help="parameters to adapt (default: every weight and neuron bias, what Lava/Loihi "
        "rewrite at run time)",
    )
    deploy.add_argument(
        "--rank-rule",
        choices=RANK_RULES,
        default=Settings.rank_rule,
        help="with --adapt: how PolyStep shares its search directions among the tensors "
        f"(as adapt's --rank-rule; default: {Settings.rank_rule}; a --resume of a run "
        "started before the default was joint needs equal)",
    )
    deploy.add_argument(
        "--update",
        choices=UPDATES,
        default=Settings.update,
        help="with --adapt: how PolyStep turns a step's direction into a move (as adapt's "
        f"--update; default: {Settings.update}; a --resume of a run started before the "
        "default was auto may need heavy-ball)",
    )
    deploy.add_argument(
        "--shaping",
        choices=SHAPING_CHOICES,
        default=Settings.shaping,
        help="with --adapt: how PolyStep normalises a step's costs (as adapt's --shaping; "
        f"default: {Settings.shaping}; a --resume of a run started before the default was "
        "auto may need shift)",
    )


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    add_backend(p)
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help=".npz with 'spikes' (n, T, N_in) and, optionally, 'labels' (n,)",
    )
    p.add_argument("--time-first", action="store_true", help="'spikes' arrays are (T, n, N_in)")
    add_torch_device(p)
    p.add_argument("--timeout", type=float, help="seconds to wait for a remote device's answer "
                   "(default: 60 a try, 3 tries)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path(default_out),
                   help=f"output folder (default: {default_out})")  # fmt: skip


def _time_steps_flag(args: argparse.Namespace) -> str:
    """What sets the model's T: this command's --time-steps for an snnTorch or NIR model; a
    spec's T is its own (it comes from the model it was converted from)."""
    return "convert --time-steps" if args.spec is not None else "--time-steps"


# --------------------------------------------------------------------------- check
def check(args: argparse.Namespace) -> int:
    from polystep_neuro.run.adapt_job import load_spike_data
    from polystep_neuro.run.parity import run_check

    reference = read_model(args)
    device_spec = None if args.device_spec is None else NetworkSpec.load(args.device_spec)
    spikes, labels = load_spike_data(
        args.data, reference.spec, args.time_first, need_labels=False,
        time_steps_flag=_time_steps_flag(args),
    )  # fmt: skip
    if args.samples is not None:
        if args.samples < 1:
            raise PolystepError(f"--samples must be >= 1, got {args.samples}")
        spikes = spikes[: args.samples]
        labels = None if labels is None else labels[: args.samples]
    report = run_check(
        reference, args.backend, spikes, labels, device_spec=device_spec,
        torch_device=args.torch_device, timeout_s=args.timeout,
    )  # fmt: skip
    print(report.table())
    path = report.save(args.out)
    print(f"report in {path} and {args.out / 'parity.md'}")
    return 0


# --------------------------------------------------------------------------- deploy
def deploy(args: argparse.Namespace) -> int:
    from polystep_neuro.run.adapt_job import load_spike_data
    from polystep_neuro.run.deploy import deploy as run_deploy
    from polystep_neuro.run.user_data import reused_notes

    _record_or_check_files(args)
    reference: Reference = read_model(args)
    spec = reference.spec

    def data(path: Path, labels_needed: bool = True) -> Any:
        spikes, labels = load_spike_data(
            path, spec, args.time_first, need_labels=labels_needed,
            time_steps_flag=_time_steps_flag(args),
        )  # fmt: skip
        return spikes if labels is None else (spikes, labels)

    for note in reused_notes(args.data, dict(args.test), lambda name: f"--test {name}"):
        print(note)
    result = run_deploy(
        reference,
        args.backend,
        data=data(args.data, labels_needed=False),
        validation=None if args.val is None else data(args.val, labels_needed=False),
        test={name: data(path) for name, path in args.test},
        drifted=None if args.drifted is None else data(args.drifted, labels_needed=False),
        writable=args.writable,
        budget=args.budget,
        calibrate=not args.no_calibration,
        output_copies=not args.no_output_copies,
        adapt=args.adapt,
        torch_device=args.torch_device,
        timeout_s=args.timeout,
        out_dir=args.out,
        progress=not args.no_progress,
        seed=args.seed,
        resume=args.resume,
        report=print,
        rank_rule=args.rank_rule,
        update=args.update,
        shaping=args.shaping,
    )
    if result.result.interrupted:
        raise Interrupted(
            f"interrupted after step {result.result.steps}; checkpoint saved in {args.out}; "
            "run the same command with --resume to continue"
        )
    result.start.save(args.out / "converted.npz")
    summary = result.to_json()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(result.summary(with_adaptation=False))  # its adaptation line was said as it ran
    print(
        f"{result.parameter_sets:,} parameter sets; device network in "
        f"{args.out / 'adapted.npz'} (converted: {args.out / 'converted.npz'}), report in "
        f"{args.out / 'summary.json'}"
    )
    return 0


# The files a deploy run reads, by the flag that gives them (config.json records them).
_DEPLOY_FILES = {
    "snntorch": "--snntorch",
    "nir": "--nir",
    "spec": "--spec",
    "data": "--data",
    "val": "--val",
    "test": "--test",
    "drifted": "--drifted",
}


def _record_or_check_files(args: argparse.Namespace) -> None:
    """--resume goes on only with the files the run in --out was started with; a new run
    records them in config.json (with the backend) for a later --resume to compare."""
    from polystep_neuro.run.checkpoint import ensure_writable_dir
    from polystep_neuro.run.resume_files import read_saved, refuse_other_files

    files: dict[str, Any] = {
        key: None if getattr(args, key) is None else str(getattr(args, key))
        for key in _DEPLOY_FILES
    }
    files["test"] = {name: str(path) for name, path in args.test}
    config = args.out / "config.json"
    if args.resume:
        saved = read_saved(config)
        if saved is not None:
            refuse_other_files(args.out, saved, files, _DEPLOY_FILES)
        return
    ensure_writable_dir(args.out)
    config.write_text(json.dumps({**files, "backend": args.backend}, indent=2), encoding="utf-8")
