"""Which layout a user's spike array is in, said against the network it is meant for.

snnTorch's ``spikegen`` makes spike trains time-first, (T, n, N_in); the project's files and
streams are batch-first, (n, T, N_in).  A wrong layout only shows as a shape mismatch deep
in the device, so the commands' data files, ``watch``'s batches and the arrays given to
``polystep_neuro.adapt`` are checked here, against the network's own T, where the remedy
(``--time-first`` / ``time_first=`` or dropping it) can be named.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec


def batch_first(
    spikes: np.ndarray,
    spec: NetworkSpec,
    time_first: bool,
    what: str,
    time_steps_flag: str = "convert --time-steps",
) -> np.ndarray:
    """``spikes`` as the network takes them, (n, T, N_in): transposed from (T, n, N_in) when
    ``time_first``, then checked by :func:`check_layout` (same arguments)."""
    if time_first:
        if spikes.ndim != 3:
            raise PolystepError(
                f"{what} must be 3-D, got shape {spikes.shape}{_flatten_hint(spikes.shape, True)}"
            )
        spikes = np.ascontiguousarray(spikes.transpose(1, 0, 2))
    check_layout(spikes, spec, time_first, what, time_steps_flag)
    note = either_layout(spikes.shape, spec.num_steps, time_first, what)
    if note is not None:
        print(note, flush=True)
    return spikes


def either_layout(shape: tuple[int, ...], t: int, time_first: bool, what: str) -> str | None:
    """The note for spikes read batch-first whose shape fits both layouts (as many samples as
    the network's T): spikegen's (T, n, N_in) read that way fits every check and scores at
    chance (a user's 50 samples of T=50: 18 % where 98 % was right), so it is said; None
    otherwise, and when ``time_first`` was asked for (the caller chose)."""
    if time_first or len(shape) != 3 or not shape[0] == shape[1] == t:
        return None
    return (
        f"note: {what} {tuple(shape)} fit both layouts ({t} samples, {t} time steps): read "
        "batch-first (n, T, N_in); if they are time-first (T, n, N_in), as snnTorch's spikegen "
        "makes them, pass --time-first (time_first=True), or every result is wrong"
    )


def check_layout(
    spikes: np.ndarray,
    spec: NetworkSpec,
    time_first: bool,
    what: str,
    time_steps_flag: str = "convert --time-steps",
) -> None:
    """Raise one PolystepError naming the remedy unless ``spikes`` — batch-first already,
    transposed when ``time_first`` — fit ``spec``; ``what`` names the array in the message
    (e.g. ``'spikes' in data.npz``), ``time_steps_flag`` what sets the network's T for the
    command at hand (``check`` and ``deploy`` take ``--time-steps`` themselves)."""
    try:
        spec.check_inputs(spikes)
    except SpecError as exc:
        shape, t = spikes.shape, spec.num_steps
        # T where the batch should be: the other layout than the one time_first says
        other_layout = spikes.ndim == 3 and shape[0] == t and shape[1] != t
        if other_layout and time_first:
            raise PolystepError(
                f"{what}: {(shape[1], shape[0], shape[2])} as given, which is already "
                f"batch-first (n, T, N_in) for this network (T={t}); drop --time-first "
                "(time_first=False)"
            ) from None
        if other_layout:
            hint = (
                " — it looks time-first (T, n, N_in), as snnTorch's spikegen makes it; "
                "pass --time-first (time_first=True), which reads every data file or array "
                "of the call that way, so give them all in one layout"
            )
        elif spikes.ndim == 3 and shape[1] != t and shape[2] == spec.n_in:
            hint = (
                f" — the network runs {t} time steps per sample, the data {shape[1]} "
                f"({time_steps_flag}{'' if time_steps_flag.endswith('=') else ' '}{shape[1]} "
                "sets it)"
            )
            if not time_first:
                hint += "; spikes made time-first (T, n, N_in) need --time-first (time_first=True)"
        elif spikes.ndim == 3 and shape[2] != spec.n_in:
            hint = (
                f" — the network takes {spec.n_in} inputs per time step, the data have {shape[2]}"
            )
        else:
            hint = _flatten_hint(shape, time_first)
        if time_first and spikes.ndim == 3:  # the shape said is the transposed one
            hint = f" (read time-first from {(shape[1], shape[0], shape[2])} as given){hint}"
        raise PolystepError(f"{what}: {exc}{hint}") from None
    _check_finite(spikes, what)


def _flatten_hint(shape: tuple[int, ...], time_first: bool) -> str:
    """For spikes with more than one axis per time step (event frames: polarity, height,
    width, as an event camera's tools give them), how to make them the network's inputs."""
    if len(shape) <= 3:
        return ""
    per_step = int(np.prod(shape[2:]))
    layout = "(T, n, ...)" if time_first else "(n, T, ...)"
    return (
        f" — {shape[2:]} per time step (event frames?): flatten each step to {per_step} "
        f"inputs, x.reshape(x.shape[0], x.shape[1], -1) for {layout}, in C order as "
        "nn.Flatten does"
    )


def _check_finite(spikes: np.ndarray, what: str) -> None:
    """NaN or infinite inputs, said where they are read: deeper, a fixed-point device calls
    them non-spikes and a float one fails without naming the file."""
    if not np.issubdtype(spikes.dtype, np.floating):
        return
    bad = ~np.isfinite(spikes)
    if bad.any():
        sample, step, channel = (int(i[0]) for i in np.nonzero(bad))
        raise PolystepError(
            f"{what}: {int(bad.sum())} values are NaN or infinite (the first: sample "
            f"{sample}, step {step}, input {channel}); spike data must be finite"
        )


def steps_for_module(
    model: object,
    data: object,
    time_steps: int | None,
    time_first: bool,
    say: Callable[[str], None] | None = print,
) -> int | None:
    """``time_steps``, or for an snnTorch module (or a NIR graph that names no T) given
    without it the T of ``data``'s spikes (a pair, a dataset or an array; (T, B, N_in) when
    ``time_first``): the model itself does not know how many steps it runs, the data it is
    given does.  ``say`` gets the line that names the T and the layout read (a quick check
    on a few time-first samples, fewer than the steps, was read batch-first unsaid)."""
    import torch

    if time_steps is not None:
        return time_steps
    if not isinstance(model, torch.nn.Module) and not _nir_without_steps(model):
        return None
    from polystep_neuro.run import user_data

    if hasattr(data, "spikes") and hasattr(data, "batch"):  # a SpikeDataset: batch-first
        return int(data.spikes.shape[1])
    try:
        spikes, _ = user_data.split(data, need_labels=False)
    except PolystepError:
        return None  # said where the data are read; the reference asks for time_steps
    shape = getattr(spikes, "shape", None)
    if shape is None or len(shape) != 3:
        return None  # the reference then asks for time_steps by name
    samples, steps = (
        (int(shape[1]), int(shape[0])) if time_first else (int(shape[0]), int(shape[1]))
    )
    if steps > samples:
        _refuse_more_steps_than_samples(tuple(shape), samples, steps, time_first)
    if say is not None and steps != samples:  # equal: batch_first's both-layouts note says it
        say(steps_note(tuple(shape), samples, steps, time_first))
    return steps


def steps_note(shape: tuple[int, ...], samples: int, steps: int, time_first: bool) -> str:
    """The line that says the T taken from the data, and the layout it was read in."""
    layout = "time-first (T, n, N_in)" if time_first else "batch-first (n, T, N_in)"
    hint = (
        ""
        if time_first
        else "; spikes made time-first (T, n, N_in), as snnTorch's spikegen makes them, need "
        "--time-first (time_first=True)"
    )
    return (
        f"note: T = {steps} time steps per sample, from the data's spikes {shape} read "
        f"{layout}: {samples} samples{hint}; --time-steps (time_steps=) sets T"
    )


def _nir_without_steps(model: object) -> bool:
    """A NIR graph, or the path of one, whose metadata names no number of time steps."""
    import os

    is_path = isinstance(model, (str, os.PathLike)) and not os.fspath(model).endswith(
        (".npz", ".pt", ".pth")  # read as a spec or an snnTorch module, as the rest is NIR
    )
    if not is_path and not type(model).__module__.startswith("nir"):
        return False
    try:
        from polystep_neuro.run.interop.nir import graph_steps
    except ImportError:
        return False  # no nir installed: the import that follows says so
    return graph_steps(model) is None


def _refuse_more_steps_than_samples(
    shape: tuple[int, ...], samples: int, steps: int, time_first: bool
) -> None:
    """Data read as more time steps than samples are nearly always in the other layout
    (spikegen's (T, n, N_in) read batch-first), and a module does not know its own T, so
    nothing downstream would notice: say so, with both ways out."""
    if time_first:
        remedy = "they look batch-first (n, T, N_in): drop --time-first (time_first=False)"
    else:
        remedy = (
            "they look time-first (T, n, N_in), as snnTorch's spikegen makes them: pass "
            "--time-first (time_first=True)"
        )
    raise PolystepError(
        f"the data's spikes {shape}, read {'time-first' if time_first else 'batch-first'}, "
        f"are {samples} samples of {steps} time steps, more steps than samples: {remedy}; "
        f"if they are {samples} samples of {steps} steps, pass --time-steps {steps} "
        f"(time_steps={steps})"
    )
