"""Backend options: for each backend kind one table of what it accepts, each option's
default, meaning and check.

A table lives in the backend's catalog record (``devices.catalog``); the backend reads its
options through that table when it is built, whether by ``open_backend`` or directly, so
an option's name, default and valid range are written once and checked once.  Standard
library only: the Lava env imports it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from polystep_neuro.core.errors import DeviceError

__all__ = [
    "MAX_SECONDS",
    "Option",
    "OptionTable",
    "count",
    "flag",
    "number",
    "optional",
    "seconds",
]

# Longest wait any option may ask for (about 11.6 days): beyond it a millisecond count
# overflows ZeroMQ's int32 timeouts, and no device call takes that long.
MAX_SECONDS = 1_000_000.0

Check = Callable[[str, Any], Any]  # (option name, value) -> the value to use, or DeviceError


def _as_is(name: str, value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Option:
    """One keyword a backend takes: its default, what it means, and how a value is checked
    (``check(name, value)`` returns the value to use or raises DeviceError)."""

    name: str
    default: Any
    meaning: str
    check: Check = _as_is


class OptionTable(Mapping[str, Option]):
    """The options of one backend kind, in the order they are documented."""

    def __init__(self, *options: Option) -> None:
        self._options = {option.name: option for option in options}

    def __getitem__(self, name: str) -> Option:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def plus(self, *options: Option) -> OptionTable:
        """This table with ``options`` added (one of the same name is replaced in place)."""
        merged = dict(self._options)
        for option in options:
            merged[option.name] = option
        return OptionTable(*merged.values())

    def with_meaning(self, name: str, meaning: str) -> OptionTable:
        return self.plus(replace(self._options[name], meaning=meaning))

    def defaults(self) -> dict[str, Any]:
        return {name: option.default for name, option in self._options.items()}

    def refuse_unknown(self, owner: str, given: Mapping[str, Any], hint: str = "") -> None:
        """DeviceError naming every accepted option when ``given`` holds another."""
        unknown = [name for name in given if name not in self._options]
        if unknown:
            accepted = ", ".join(self._options) or "none"
            raise DeviceError(
                f"the {owner} backend takes no option {', '.join(map(repr, unknown))}; "
                f"it accepts: {accepted}{f' {hint}' if hint else ''}"
            )

    def resolve(
        self,
        owner: str,
        given: Mapping[str, Any],
        positional: Sequence[Any] = (),
        hint: str = "",
    ) -> dict[str, Any]:
        """Every option's value: ``given`` (``positional`` values fill the first options in
        order) checked, the rest at their defaults.  DeviceError for an unknown option or
        a value out of range."""
        if len(positional) > len(self._options):
            raise DeviceError(
                f"the {owner} backend takes at most {len(self._options)} option values by "
                f"position, got {len(positional)}"
            )
        values = dict(zip(self._options, positional, strict=False))
        twice = sorted(set(values) & set(given))
        if twice:
            raise DeviceError(f"the {owner} backend got {', '.join(twice)} twice")
        self.refuse_unknown(owner, given, hint)
        values.update(given)
        return {
            name: option.check(name, values[name]) if name in values else option.default
            for name, option in self._options.items()
        }


# --------------------------------------------------------------------------- checks
def number(
    *,
    minimum: float = 0.0,
    inclusive: bool = False,
    maximum: float = math.inf,
    integer: bool = False,
    unit: str = "",
) -> Check:
    """A finite number (an int where ``integer``) above ``minimum`` (or equal, where
    ``inclusive``) and at most ``maximum``; bools are refused, ints become floats unless
    ``integer``."""
    low = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    what = f"{'an integer' if integer else 'a finite number'}{f' of {unit}' if unit else ''}"
    rule = f"{what} {low}" + (f" and <= {maximum:g}" if math.isfinite(maximum) else "")

    def check(name: str, value: Any) -> Any:
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, kind) and not isinstance(value, bool):
            number_ = int(value) if integer else float(value)
            above = number_ >= minimum if inclusive else number_ > minimum
            if math.isfinite(number_) and above and number_ <= maximum:
                return number_
        raise DeviceError(f"{name} must be {rule}, got {value!r}")

    return check


def seconds(minimum: float = 0.0, inclusive: bool = False) -> Check:
    """A wait in seconds: finite, above ``minimum``, at most ``MAX_SECONDS``."""
    return number(minimum=minimum, inclusive=inclusive, maximum=MAX_SECONDS, unit="seconds")


def count(minimum: int = 1, maximum: float = math.inf) -> Check:
    """An integer >= ``minimum``."""
    return number(minimum=minimum, inclusive=True, maximum=maximum, integer=True)


def optional(check: Check, none_means: str) -> Check:
    """``check``, or None, which means ``none_means`` (e.g. "never", "no bound")."""

    def maybe(name: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(name, value)
        except DeviceError as exc:
            must = f"{name} must be "
            raise DeviceError(str(exc).replace(must, f"{must}None ({none_means}) or ", 1)) from None

    return maybe


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DeviceError(f"{name} must be True or False, got {value!r}")
    return value
