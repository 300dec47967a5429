"""Command-line options that several ``polystep-neuro`` commands share, written once so that
every command spells them, their defaults and their errors the same way."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from polystep_neuro.run.deprecation import add_renamed_flag
from polystep_neuro.run.run_defaults import RunConfig


class WholeWords(argparse.HelpFormatter):
    """Help text wrapped between words only: argparse cuts a long word to fit, and the code
    a help line tells you to copy (``spike_grad=functools.partial(...)``) came out as
    ``s pike_grad=...``."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_long_words=False, break_on_hyphens=False
        )


def add_backend(p: argparse.ArgumentParser, what: str = "device backend") -> None:
    """``--backend``, defaulting to the run's default backend."""
    p.add_argument(
        "--backend",
        default=RunConfig.backend,
        help=f"{what} (default: {RunConfig.backend}; see `polystep-neuro devices list`)",
    )


def _torch_device(value: str) -> str:
    """auto, cpu, cuda or cuda:N (checked here, so a typo is an argparse error)."""
    index = value.removeprefix("cuda:")
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and index.isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")


def add_torch_device(p: argparse.ArgumentParser) -> None:
    """``--torch-device`` (checked), and the old ``--device`` as its hidden alias."""
    p.add_argument(
        "--torch-device",
        default=RunConfig.torch_device,
        type=_torch_device,
        help="where torch runs (the torch simulators and the optimiser): auto (CUDA when "
        "present), cpu, cuda or cuda:N; the device backend is --backend",
    )
    add_renamed_flag(p, "--device", "--torch-device", type=_torch_device)


def named_path(value: str) -> tuple[str, Path]:
    """NAME=FILE, or FILE (named after the file): the argparse type of ``--test``."""
    name, sep, path = value.partition("=")
    if not sep:
        return Path(value).stem, Path(value)
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE or FILE, got {value!r}")
    return name, Path(path)


def non_negative(value: str) -> float:
    """The argparse type of a weight that must be >= 0 (``--anchor -1`` reached the loop's
    own check, which names its field, not the flag)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


non_negative.__name__ = "number >= 0"


def positive_seconds(value: str) -> float:
    """The argparse type of a duration that must be a finite number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < number < float("inf"):  # NaN too
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {value}")
    return number


positive_seconds.__name__ = "seconds > 0"


def at_least(minimum: int):  # noqa: ANN201 (an argparse type)
    """The argparse type of an integer option that must be >= ``minimum``: a usage error
    before anything runs (``--steps -5`` once printed what it would adapt, made its output
    folder, then stopped)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {number}")
        return number

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_adapt_switch(p: argparse.ArgumentParser, always: str, never: str) -> None:
    """``--adapt`` / ``--no-adapt`` into ``adapt``: True, False, or None (deploy's own rule:
    its adaptation stage where a gap is left); ``always`` and ``never`` are their helps."""
    stage3 = p.add_mutually_exclusive_group()
    stage3.add_argument(
        "--adapt", dest="adapt", action="store_const", const=True, default=None, help=always
    )
    stage3.add_argument("--no-adapt", dest="adapt", action="store_const", const=False, help=never)
