"""Keywords a caller passes by name: renamed keywords and flags keep working for one
release, with a warning that names the new one, so a user's script never breaks between two
releases without a word; an unknown one is said with the closest known name."""

from __future__ import annotations

import argparse
import difflib
import sys
import warnings
from collections.abc import MutableMapping, Sequence
from typing import Any


def renamed(options: MutableMapping[str, Any], old: str, new: str, value: Any, where: str) -> Any:
    """``value`` (the new keyword's), or ``options[old]`` (removed from ``options``) with a
    DeprecationWarning when a caller still passes the old keyword."""
    if old not in options:
        return value
    warn(f"{where}: {old}= is now {new}=; {old}= goes in the next release", stacklevel=4)
    return options.pop(old)


def unexpected_option(call: str, name: str, known: Sequence[str], takes: str) -> TypeError:
    """The error for an option ``call`` does not take: the closest of ``known`` where one
    is close, then ``takes`` (what it does take); Python's own named a class the caller
    never saw ("Settings.__init__() got an unexpected keyword argument")."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(f"{call}() got an unexpected option {name!r}{hint}; {takes}")


def warn(message: str, stacklevel: int = 3) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


class RenamedFlag(argparse.Action):
    """An old command-line flag kept for one release: it stores into the new flag's place
    and says so on stderr (the command's own channel for notes)."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        print(
            f"polystep-neuro: {option} is now {self.new}; {option} goes in the next release",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """``old`` as a hidden alias of the option ``new`` (same destination; pass its type)."""
    dest = new.removeprefix("--").replace("-", "_")
    parser.add_argument(
        old, dest=dest, action=RenamedFlag, new=new, help=argparse.SUPPRESS, **kwargs
    )
