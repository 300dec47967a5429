"""``polystep-neuro convert`` and ``polystep-neuro export``: bring your own model in, take the
adapted network out.

convert: a NIR file, a whole ``torch.save(model)`` snnTorch module or a spec .npz -> a
NetworkSpec .npz in the semantics of the backend it is meant for (``--backend``, default
torch-sim-fixed: the device's; ``torch-sim`` keeps the model's own exactly), every change
listed and marked exact or approximate, with the parameters the device may rewrite.
export: a NetworkSpec .npz -> a NIR file, or the calibrated integer network as a lava-dl
netx HDF5 file.

Loading an ``nn.Module`` file runs pickle, which can execute any code the file's author put
in it: it happens only for the explicit ``--snntorch`` flag, and only trusted files belong
there.  Every expected failure is a ``PolystepError`` (one line on stderr, exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.deprecation import add_renamed_flag
from polystep_neuro.run.interop import MEASURE
from polystep_neuro.run.reference import (
    Reference,
    load_snntorch_module,
    nir_reference,
    snntorch_reference,
)
from polystep_neuro.run.writable import resolve_writable

__all__ = ["add_parsers", "convert", "export", "load_snntorch_module", "read_model"]

SNNTORCH_HELP = (
    "a whole snnTorch model saved with torch.save(model, FILE) (nn.Sequential of nn.Linear + "
    "snn.Leaky/snn.Synaptic; torch.save cannot pickle snnTorch's default surrogate: build the "
    "neurons with spike_grad=functools.partial(snntorch.surrogate.ATan.apply, alpha=2.0), the "
    "same function). Loading it runs Python's pickle, which executes whatever code the file "
    "contains: use only files you trust"
)


def add_parsers(sub: Any) -> None:
    """The ``convert`` and ``export`` subcommands, on cli's subparsers object."""
    convert = sub.add_parser(
        "convert",
        help="your own model (NIR file or saved snnTorch module) -> a NetworkSpec .npz",
        description="Convert a model into a NetworkSpec .npz for `polystep-neuro adapt`.",
    )
    add_model_arguments(convert, required=True)
    convert.add_argument(
        "--backend",
        default="torch-sim-fixed",
        help="the backend the network is meant for (default: torch-sim-fixed); a device "
        "backend (torch-sim-fixed, lava, lava-fixed, loihi2) gets the device's semantics "
        "(reset to zero in the spiking step, one-step synaptic delay, Dense biases folded "
        "into the neuron biases), torch-sim keeps the model's own exactly",
    )
    convert.add_argument(
        "--device-semantics",
        action="store_true",
        help="the device's semantics whatever --backend says",
    )
    convert.add_argument(
        "--writable",
        nargs="+",
        metavar="NAME",
        help="parameters the device may rewrite during adaptation (default: every fc{i}.weight "
        "and lif{i}.v_bias, what Lava/Loihi can rewrite at run time; 'all' for every one; "
        "`adapt` checks them against the device it runs on)",
    )
    convert.add_argument("--out", type=Path, required=True, help="the spec .npz to write")

    export = sub.add_parser(
        "export",
        help="a NetworkSpec .npz -> a NIR file or a lava-dl netx HDF5 file",
        description="Export a NetworkSpec .npz to NIR or to lava-dl netx.",
    )
    export.add_argument("--spec", type=Path, required=True, help="a spec .npz (NetworkSpec.save)")
    export.add_argument("--to", choices=["nir", "netx"], required=True, help="the file format")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument(
        "--dt", type=float, default=1e-4, help="nir only: the time step in seconds (default 1e-4)"
    )
    export.add_argument(
        "--recalibrate",
        action="store_true",
        help="netx only: replace the spec's fixed-point calibration by one netx can store "
        "(weight exponent 0); the device integers then differ from the old calibration's",
    )
    export.add_argument(
        "--round-biases",
        action="store_true",
        help="netx only: round every neuron bias to the multiple of 64 device units netx "
        "stores (the largest change per layer is printed, as a share of its threshold) and "
        "write the network the file holds beside it as OUT.npz",
    )


# --------------------------------------------------------------------------- convert
def add_model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """--snntorch / --nir / --spec (one of them), --time-steps and --dt: a trained model."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--snntorch", type=Path, metavar="FILE", help=SNNTORCH_HELP)
    source.add_argument("--nir", type=Path, metavar="FILE", help="a NIR graph file (.nir)")
    source.add_argument(
        "--spec", type=Path, metavar="FILE", help="a NetworkSpec .npz (NetworkSpec.save)"
    )
    parser.add_argument(
        "--time-steps",
        type=int,
        help="T, the time steps per sample, for an snnTorch model (default: the T of --data "
        "where the command takes one) and for NIR files not written by `export`",
    )
    add_renamed_flag(parser, "--num-steps", "--time-steps", type=int)
    parser.add_argument(
        "--dt",
        type=float,
        help="NIR only: the time step its time constants are measured in (default: the "
        "file's metadata, else 1e-4 s as snnTorch assumes)",
    )


def read_model(args: argparse.Namespace) -> Reference:
    """The model named by --snntorch / --nir / --spec, as the reference it computes."""
    if args.dt is not None and args.nir is None:
        raise SpecError("--dt applies to NIR files only")
    if args.snntorch is not None:
        module = load_snntorch_module(args.snntorch)
        if args.time_steps is None:
            args.time_steps = _steps_of_data(module, args)
        return snntorch_reference(module, args.time_steps, f"snnTorch model {args.snntorch}")
    if args.nir is not None:
        if args.time_steps is None and getattr(args, "data", None) is not None:
            from polystep_neuro.run.interop.nir import graph_steps

            if graph_steps(args.nir) is None:  # a graph from another tool: T from --data
                args.time_steps = _steps_of_data(args.nir, args)
        return nir_reference(args.nir, args.time_steps, args.dt)
    spec = NetworkSpec.load(args.spec)
    if args.time_steps is not None and args.time_steps != spec.num_steps:
        raise SpecError(
            f"{args.spec} runs {spec.num_steps} steps per sample; --time-steps applies to "
            f"snnTorch and NIR models only"
        )
    return Reference(spec, f"spec {args.spec}")


def _steps_of_data(module: Any, args: argparse.Namespace) -> int:
    """An snnTorch model (or a NIR graph from another tool) does not know its T; the
    command's --data does (read as
    ``pn.adapt`` reads it, :func:`~polystep_neuro.run.spike_layout.steps_for_module`), where
    the command has one."""
    from polystep_neuro.run.spike_layout import steps_for_module
    from polystep_neuro.run.user_data import split

    data = getattr(args, "data", None)
    steps = None
    if data is not None:  # a file that cannot be read says so here, in its own words
        spikes = split(data, need_labels=False, what=str(data))[0]
        steps = steps_for_module(module, spikes, None, args.time_first, say=None)
    if steps is None:
        what = "a NIR graph" if isinstance(module, (str, Path)) else "an snnTorch model"
        raise SpecError(f"--time-steps is needed for {what} (time steps per sample)")
    layout = "(T, n, N_in)" if args.time_first else "(n, T, N_in)"
    print(f"  note: T = {steps} time steps per sample, from {data}'s spikes read {layout}"
          f"{'' if args.time_first else ' (spikegen makes (T, n, N_in): --time-first)'}; "
          "--time-steps sets it")  # fmt: skip
    return steps


def convert(args: argparse.Namespace) -> int:
    reference = read_model(args)
    source = reference.label
    backend = "torch-sim-fixed" if args.device_semantics else args.backend
    spec, changes = reference.for_backend(backend)
    # A converted network starts from what the device rewrites at run time, whatever the
    # source file marked; no device is open here, so `adapt` checks the set against its own.
    chosen = resolve_writable(spec.with_writable(()), args.writable, capabilities=None)
    spec = spec.with_writable(chosen.loaded)
    _save(spec, args.out)
    print(f"wrote {args.out}: {_describe(spec)} from {source}, for {backend}")
    if args.nir is not None:  # what reading by NIR's definition took (dt, decays, gains)
        from polystep_neuro.run.interop.nir import reading_notes

        for line in reading_notes(args.nir, args.dt):
            print(f"  read: {line}")
    for change in changes:
        print(f"  changed: {change}")
    if _fixed_point(backend):
        print(
            f"  quantised on load: {backend} runs the weights and neuron parameters in Loihi "
            "2 fixed point (integers with a per-layer exponent), a difference `check` measures "
            "with the others"
        )
    approximate = sum(not getattr(c, "exact", True) for c in changes)
    if approximate:
        print(f"  {approximate} approximate change(s): {MEASURE}")
    from polystep_neuro.run.interop import device_compatibility, device_timed

    problems = [] if device_timed(backend) else device_compatibility(spec)
    if problems:
        print(
            f"  note: {len(problems)} difference(s) from Lava/Loihi semantics (runs exactly "
            f"on torch-sim; --backend torch-sim-fixed converts): " + "; ".join(problems)
        )
    return 0


def _fixed_point(backend: str) -> bool:
    """Whether the backend named computes in Loihi 2 fixed point (its catalog record says)."""
    from devices.catalog import RECORDS
    from polystep_neuro.run.writable import FIXED_POINT

    record = RECORDS.get(backend)
    return record is not None and record.precision == FIXED_POINT


def _describe(spec: NetworkSpec) -> str:
    sizes = "-".join(str(n) for n in spec.sizes)
    delays = sorted({layer.delay for layer in spec.layers})
    return (
        f"{sizes}, {spec.num_steps} steps, delay {'/'.join(map(str, delays))}, writable: "
        f"{', '.join(spec.writable) or 'none'}"
    )


def _save(spec: NetworkSpec, path: Path) -> None:
    try:
        spec.save(path)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- export
def export(args: argparse.Namespace) -> int:
    spec = NetworkSpec.load(args.spec)
    copies = spec.output_copies  # the side file of --round-biases keeps the host's readout
    if copies != 1:  # no file format has the readout that sums them
        back = " (convert --nir reads the classes back)" if args.to == "nir" else ""
        print(
            f"  note: {args.spec} counts each class over {spec.output_copies} output neurons "
            f"(deploy's output copies); the file's outputs are all {spec.n_out}: class c is "
            f"the sum of outputs c, c + {spec.n_classes}, ...{back}"
        )
        spec = spec.device_network()
    if args.to == "nir":
        if args.recalibrate or args.round_biases:
            raise SpecError("--recalibrate and --round-biases apply to --to netx only")
        from polystep_neuro.run.interop.nir import write_nir

        write_nir(spec, args.out, dt=args.dt, output_copies=copies)
        if any(layer.delay for layer in spec.layers):  # said before a user tries to import it
            print(
                "  note: the graph holds Delay nodes (the device's one-step synaptic delay), "
                "which snnTorch 1.0's import_from_nir (snntorch.import_nir) and Sinabs do not "
                "read; `polystep-neuro convert --nir` and NIR tools that take Delay do"
            )
        print(f"wrote {args.out}: NIR graph of {_describe(spec)} (dt {args.dt:g} s)")
        return 0
    from polystep_neuro.run.interop.netx import (
        calibrate_for_netx,
        round_biases_for_netx,
        write_netx,
    )

    calibrated = all(layer.fixed_scale is not None for layer in spec.layers)
    if args.recalibrate or not calibrated:
        spec = calibrate_for_netx(spec, force=args.recalibrate)
        why = "--recalibrate" if args.recalibrate else f"{args.spec} has no fixed-point calibration"
        print(
            f"  note: {why}: calibrated with weight exponent 0 for netx; lava-fixed runs the "
            f"same integers from interop.netx.calibrate_for_netx(spec)"
        )
    held = None
    if args.round_biases:
        spec, changes = round_biases_for_netx(spec)
        held = args.out.with_name(args.out.name + ".npz")
    write_netx(spec, args.out)
    if held is not None:  # said and saved only beside a file that was written
        spec.with_readout_copies(copies).save(held)
        moved = ", ".join(f"layer {i} {c:.2%}" for i, c in enumerate(changes))
        print(
            f"  note: biases rounded to netx's multiples of 64 device units (largest change "
            f"of a threshold: {moved}); the network the file holds is {held}: evaluate it "
            f"there to see what the rounding cost"
        )
    print(f"wrote {args.out}: lava-dl netx network of {_describe(spec)}")
    return 0
