"""FanOut: one evaluate spread over several devices, V split among those still up.

The shared part of ``ShardedBackend`` (device servers) and ``RayBackend`` (Ray actors):
which members are live, dropping one that is lost, splitting V over the live ones in
proportion to their ``max_sets``, redoing a lost member's share on the others in the same
call, gathering the counts in V order, and refusing members that disagree on precision or
on the loaded network.  The result is exactly what one member returns: ``evaluate`` is
pure per parameter set.  A subclass says how its members load and evaluate, and how a
loss reads in the log.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devices.base import BaseBackend
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec

__all__ = [
    "FanOut",
    "Member",
    "Outcome",
    "Range",
    "common_writable",
    "same_spec",
    "share_weights",
    "split_range",
]

Range = tuple[int, int]
# one member's part of an evaluate: counts by the start of their range, the ranges it did
# not finish, and the error that stopped it (None when it finished)
Outcome = tuple[dict[int, np.ndarray], list[Range], BaseException | None]


@dataclass(kw_only=True)
class Member:
    """One device of the fan-out and whether it is used; a subclass says what it reported
    (``caps``) and how messages name it (``label``)."""

    down_since: float | None = None  # time.monotonic() when dropped; None while up
    reason: str = ""  # why it was dropped

    @property
    def up(self) -> bool:
        return self.down_since is None

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def caps(self) -> Capabilities | None:
        raise NotImplementedError


class FanOut(BaseBackend):
    """The device contract over several members, V split among the live ones."""

    is_remote = True
    losses: tuple[type[BaseException], ...] = (DeviceUnavailable,)  # errors that drop a member
    log = logging.getLogger(__name__)

    def __init__(self) -> None:
        super().__init__()
        self.members: list[Member] = []

    # ------------------------------------------------------------------ what subclasses say
    def _load_members(self, live: list[Member], spec: NetworkSpec) -> list[object]:
        """Each live member's effective spec after loading ``spec``, or its exception."""
        raise NotImplementedError

    def _evaluate_members(
        self, plan: list[tuple[Member, list[Range]]], batch: CheckedBatch
    ) -> list[Outcome]:
        """Each member's ranges of ``batch`` evaluated (concurrently), one Outcome each."""
        raise NotImplementedError

    def _drop_message(self, member: Member, left: int) -> str:
        raise NotImplementedError

    def _all_down(self, op: str) -> DeviceUnavailable:
        raise NotImplementedError

    def _before_call(self) -> None:
        """Runs before every load and evaluate."""
        self._check_open()

    # ------------------------------------------------------------------ contract
    @property
    def capabilities(self) -> Capabilities:
        caps = [m.caps for m in self.members if m.caps is not None]
        limits = [m.caps.max_sets for m in self._live() if m.caps is not None]
        names = sorted({c.name for c in caps})
        return Capabilities(
            name=self._caps_name(names),
            precision=self.precision,
            max_sets=None if not limits or None in limits else sum(limits),  # type: ignore[arg-type]
            writable=common_writable(caps),
            is_remote=True,
            device=self.describe(),
            address=self._address(),
        )

    def _caps_name(self, names: list[str]) -> str:
        return self.name

    def _address(self) -> str:
        return ""

    def load(self, spec: NetworkSpec) -> None:
        """Load on every live member; they must agree on the effective network."""
        self._before_call()
        spec.validate()
        live = self._live()
        outcomes = self._load_members(live, spec)
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, self.losses):
                raise outcome
        loaded: list[tuple[Member, NetworkSpec]] = []
        for member, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, NetworkSpec):
                loaded.append((member, outcome))
            else:
                self._drop(member, outcome)  # type: ignore[arg-type]
        if not loaded:
            raise self._all_down("load")
        first, reference = loaded[0]
        for member, other in loaded[1:]:
            if not same_spec(other, reference):
                raise DeviceError(
                    f"{member.label} loaded a different network than {first.label} (e.g. "
                    "another fixed-point calibration): run one polystep-neuro version and "
                    "backend kind everywhere"
                )
        self._spec = reference

    def run_batch(self, batch: CheckedBatch) -> np.ndarray:
        """Counts (V, B, N_out) int32, exactly as one member returns them.  The batch is
        checked once, here; each member gets numpy shares of it (binary spikes as uint8)."""
        wire = batch.for_wire()
        self._before_call()
        done: dict[int, np.ndarray] = {}
        pending: list[Range] = [(0, wire.num_sets)]
        while pending:
            live = self._live()
            if not live:
                raise self._all_down("evaluate")
            plan = _plan(pending, live)
            outcomes = self._evaluate_members(plan, wire)
            pending, errors = [], []
            for (member, _), (parts, unfinished, error) in zip(plan, outcomes, strict=True):
                done.update(parts)
                pending.extend(unfinished)
                if isinstance(error, self.losses):
                    self._drop(member, error)
                elif error is not None:
                    errors.append(error)
            if errors:
                raise errors[0]
        if len(done) == 1:
            counts = next(iter(done.values()))
            return counts if counts.flags.writeable else np.array(counts)  # own memory
        return np.concatenate([done[start] for start in sorted(done)])

    # ------------------------------------------------------------------ members
    def _live(self) -> list[Member]:
        return [m for m in self.members if m.up]

    def _drop(self, member: Member, exc: BaseException) -> None:
        if not member.up:
            return
        member.down_since, member.reason = time.monotonic(), str(exc) or type(exc).__name__
        self.log.warning("%s", self._drop_message(member, len(self._live())))

    def _one_precision(self, members: str, member: str) -> str:
        """The precision every member reports; DeviceError naming each when they differ
        (counts would depend on which ``member`` a parameter set landed on)."""
        precisions = {m.caps.precision for m in self.members if m.caps is not None}
        if len(precisions) != 1:
            listing = ", ".join(
                f"{m.label} = {m.caps.precision}" for m in self.members if m.caps is not None
            )
            raise DeviceError(
                f"cannot split V across {members} of different precision ({listing}): counts "
                f"would depend on which {member} a parameter set landed on; use {members} of "
                "one precision (e.g. all torch-sim-fixed / lava-fixed / loihi2)"
            )
        return precisions.pop()


def _plan(pending: Sequence[Range], live: Sequence[Member]) -> list[tuple[Member, list[Range]]]:
    """Each pending range split over the live members: (member, its non-empty shares)."""
    weights = share_weights([m.caps for m in live if m.caps is not None])
    shares: dict[int, list[Range]] = {}
    for start, stop in pending:
        for index, share in enumerate(split_range(start, stop, weights)):
            if share[1] > share[0]:
                shares.setdefault(index, []).append(share)
    return [(live[index], ranges) for index, ranges in sorted(shares.items())]


def split_range(start: int, stop: int, weights: Sequence[int]) -> list[Range]:
    """Contiguous pieces of [start, stop) proportional to ``weights`` (largest remainder).

    Deterministic, so the same V on the same members always lands the same way."""
    total = sum(weights)
    size = stop - start
    exact = [size * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    out, at = [], start
    for count in counts:
        out.append((at, at + count))
        at += count
    return out


def share_weights(caps: Sequence[Capabilities]) -> list[int]:
    """How V is shared: in proportion to ``max_sets`` when every device reports one, else
    equally."""
    limits = [c.max_sets for c in caps]
    if all(m is not None and m > 0 for m in limits):
        return [int(m) for m in limits]  # type: ignore[arg-type]
    return [1] * len(caps)


def common_writable(caps: Sequence[Capabilities]) -> tuple[str, ...]:
    """The parameter kinds every one of several devices can rewrite (in the first's order)."""
    if not caps:
        return ()
    return tuple(w for w in caps[0].writable if all(w in c.writable for c in caps))


def same_spec(a: NetworkSpec, b: NetworkSpec) -> bool:
    """Two effective specs are the same network (metadata and every array)."""
    meta_a, arrays_a = a.to_arrays()
    meta_b, arrays_b = b.to_arrays()
    return (
        meta_a == meta_b
        and arrays_a.keys() == arrays_b.keys()
        and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    )
