"""The ``polystep-neuro`` command.

Every expected failure (bad spec file, missing backend, unwritable folder, unreachable
device) ends in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from polystep_neuro import convert
from polystep_neuro.errors import Interrupted, PolystepError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the torch simulator and the PolyStep update run (default: auto = CUDA "
        "when present)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polystep-neuro",
        description="Adapt spiking networks on neuromorphic hardware with forward passes only.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="the main job: pretrain on digits, quantise, shift the input, adapt on a device",
    )
    demo.add_argument(
        "--backend",
        default="torch-sim-fixed",
        help="device backend for the adaptation stage (default: torch-sim-fixed; "
        "see `polystep-neuro devices list`)",
    )
    _add_device(demo)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--resume", action="store_true", help="continue an interrupted run")
    demo.add_argument("--quick", action="store_true", help="small sizes (about a minute on CPU)")
    demo.add_argument("--pretrain-steps", type=int, help="override the pretraining steps")
    demo.add_argument("--adapt-steps", type=int, help="override the adaptation steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    adapt = sub.add_parser("adapt", help="adapt your own network (a NetworkSpec .npz)")
    adapt.add_argument("--spec", type=Path, required=True, help="network saved by NetworkSpec.save")
    adapt.add_argument("--backend", default="torch-sim-fixed")
    _add_device(adapt)
    adapt.add_argument(
        "--writable", nargs="+", help="parameters to adapt (default: the spec's writable set)"
    )
    adapt.add_argument(
        "--data",
        type=Path,
        help=".npz with 'spikes' (n, T, N_in) and 'labels' (n,); default: "
        "digits, for 64-input 10-output networks",
    )
    adapt.add_argument(
        "--shift-noise", type=float, default=0.0, help="digits only: additive input noise"
    )
    adapt.add_argument("--shift-gain", type=float, default=1.0, help="digits only: input gain")
    adapt.add_argument(
        "--shift-dead", type=float, default=0.0, help="digits only: fraction of dead input channels"
    )
    adapt.add_argument("--steps", type=int, default=200)
    adapt.add_argument("--batch-size", type=int, default=128)
    adapt.add_argument("--rank", type=int, default=64, help="subspace rank per tensor")
    adapt.add_argument("--step-radius", type=float, default=0.2)
    adapt.add_argument("--probe-radius", type=float, default=0.4)
    adapt.add_argument("--epsilon", type=float, default=0.3)
    adapt.add_argument("--seed", type=int, default=0)
    adapt.add_argument("--out", type=Path, default=Path("runs/adapt"))
    adapt.add_argument("--resume", action="store_true")
    adapt.add_argument("--no-progress", action="store_true")

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
    convert.add_parsers(sub)  # convert, export
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from polystep_neuro.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(
        cfg,
        backend=args.backend,
        device=args.device,
        out_dir=args.out,
        resume=args.resume,
        seed=args.seed,
        progress=not args.no_progress,
    )
    if args.pretrain_steps is not None:
        cfg.pretrain = replace(cfg.pretrain, steps=args.pretrain_steps)
    if args.adapt_steps is not None:
        cfg.adapt = replace(cfg.adapt, steps=args.adapt_steps)
    _check_backend_name(cfg.backend)
    run_demo(cfg)
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from polystep_neuro.adapt_job import AdaptJob, run_adapt_job

    _check_backend_name(args.backend)
    job = AdaptJob(
        spec_path=args.spec,
        backend=args.backend,
        device=args.device,
        writable=tuple(args.writable) if args.writable else None,
        data_path=args.data,
        shift_noise=args.shift_noise,
        shift_gain=args.shift_gain,
        shift_dead=args.shift_dead,
        steps=args.steps,
        batch_size=args.batch_size,
        rank=args.rank,
        step_radius=args.step_radius,
        probe_radius=args.probe_radius,
        epsilon=args.epsilon,
        seed=args.seed,
        out_dir=args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    run_adapt_job(job)
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from devices.registry import describe_backends

    if args.devices_command == "list":
        for name, usable, why in describe_backends():
            print(f"{name:18s} {'usable' if usable else 'unavailable':12s} {why}")
    elif args.devices_command == "setup-lava":
        from devices.lava_env import setup_lava_env

        venv = setup_lava_env(
            args.python, args.venv, print, force=args.force, with_lava_dl=args.with_lava_dl
        )
        print(f"Lava env ready: {venv}")
    elif args.devices_command == "keygen":
        _cmd_keygen(args.dir, args.force)
    return 0


def _cmd_keygen(folder: Path, force: bool) -> None:
    from devices.security import KEYS_ENV, generate_keys

    paths = generate_keys(folder, force=force)
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
    from devices.registry import check_backend_name

    check_backend_name(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "demo": _cmd_demo,
        "adapt": _cmd_adapt,
        "devices": _cmd_devices,
        "convert": convert.convert,
        "export": convert.export,
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
