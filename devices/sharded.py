"""ShardedBackend: one evaluate spread over several device servers (scale-out).

``open_backend(["tcp://a:5555", "tcp://b:5555"])`` (or ``"tcp://a:5555,tcp://b:5555"``)
splits the V parameter sets of each evaluate into contiguous shards, one per endpoint,
sized in proportion to each endpoint's ``max_sets`` when every endpoint reports one
(e.g. how many replicas fit on a chip) and equal otherwise.  Every endpoint gets all B
inputs; the shards run concurrently (one worker thread per endpoint, each RemoteBackend
with its own socket, so no socket is ever shared) and the counts are gathered in V order.
The result is exactly what one server would return: ``evaluate`` is pure per parameter set.

The live/drop/resplit logic is ``devices.fanout.FanOut``'s (shared with the ray backend).

Failures.  An endpoint whose shard ends in DeviceUnavailable (it did not answer after its
retries) is *dropped*: a warning is logged and its shard is re-split over the endpoints
still up, in the same call, so the caller still gets complete counts.  A dropped endpoint
is probed in the background every ``revive_after_s`` seconds (one ``ping``, then a re-load
of the current spec); when that succeeds it rejoins at the next evaluate.  ``None`` drops
it for good.  Any other error (a bad spec, too large a batch) is raised as is: retrying it
elsewhere would fail the same way.  All endpoints must be reachable at open and agree on
precision and on the loaded network; a mismatch is a DeviceError, not a silent mix.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from devices.catalog import RECORDS, REMOTE_OPTIONS
from devices.fanout import (
    FanOut,
    Member,
    Outcome,
    Range,
    common_writable,
    same_spec,
    share_weights,
    split_range,
)
from devices.remote import RemoteBackend
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable, PolystepError
from polystep_neuro.core.network import NetworkSpec

# split_range, share_weights and common_writable live in devices.fanout; named here too
__all__ = ["ShardedBackend", "common_writable", "share_weights", "split_range"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(kw_only=True)
class _Endpoint(Member):
    """One device server in the set."""

    address: str
    backend: RemoteBackend
    probe: cf.Future[NetworkSpec | None] | None = None

    @property
    def label(self) -> str:
        return self.address

    @property
    def caps(self) -> Capabilities:
        return self.backend.capabilities


class ShardedBackend(FanOut):
    """The device contract over several ``devices.server`` endpoints, V split among them."""

    log = log

    def __init__(self, endpoints: Sequence[str], **options: Any) -> None:
        """The options are the ``sharded`` record's (``devices.catalog.SHARDED_OPTIONS``):
        every ``remote`` option, which goes to each endpoint's RemoteBackend, with
        ``curve_keys`` one key folder/mapping for all or a list with one per endpoint, and
        ``revive_after_s``, how often a dropped endpoint is probed (None: never)."""
        super().__init__()
        resolved = self._adopt(RECORDS["sharded"], options)
        addresses = [str(e).strip() for e in endpoints]
        if not addresses:
            raise DeviceUnavailable("a sharded backend needs at least one endpoint")
        if len(set(addresses)) != len(addresses):
            raise DeviceError(f"an endpoint is listed twice in {addresses}")
        keys = _keys_per_endpoint(resolved["curve_keys"], len(addresses))
        remote_options = {name: resolved[name] for name in REMOTE_OPTIONS if name != "curve_keys"}
        remote_options["connect"] = True  # capabilities are needed now (precision check)
        self.name = f"sharded {','.join(addresses)}"
        self.revive_after_s: float | None = resolved["revive_after_s"]
        self._inflight: list[cf.Future[Any]] = []
        self._pool = cf.ThreadPoolExecutor(len(addresses), thread_name_prefix="shard")
        self._revive_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="shard-revive")
        self._user_spec: NetworkSpec | None = None
        opened = self._run_all(
            [
                (lambda a=a, k=k: RemoteBackend(a, curve_keys=k, **remote_options))
                for a, k in zip(addresses, keys, strict=True)
            ]
        )
        pairs = list(zip(addresses, opened, strict=True))
        failed = [(a, r) for a, r in pairs if isinstance(r, Exception)]
        self.members = [
            _Endpoint(address=a, backend=r) for a, r in pairs if not isinstance(r, Exception)
        ]
        if failed:
            self._abandon()
            if not all(isinstance(exc, PolystepError) for _, exc in failed):
                raise next(exc for _, exc in failed if not isinstance(exc, PolystepError))
            detail = "; ".join(f"{a}: {exc}" for a, exc in failed)
            raise type(failed[0][1])(
                f"cannot shard over {len(addresses)} endpoints, {len(failed)} failed at open "
                f"(start them, or leave them out of the list): {detail}"
            )
        try:
            self.precision = self._one_precision("servers", "server")
        except DeviceError:
            self._abandon()
            raise

    # ------------------------------------------------------------------ contract
    def _caps_name(self, names: list[str]) -> str:
        return names[0] if len(names) == 1 else "+".join(names)

    def _address(self) -> str:
        return ",".join(self.endpoints)

    def describe(self) -> str:
        up = sum(ep.up for ep in self._endpoints)
        parts = [ep.backend.describe() + ("" if ep.up else " (down)") for ep in self._endpoints]
        return f"{len(self._endpoints)} device servers, {up} up: " + "; ".join(parts)

    def load(self, spec: NetworkSpec) -> None:
        """Load on every endpoint that is up; they must agree on the effective network."""
        super().load(spec)
        self._user_spec = spec
        for ep in self._endpoints:  # a dropped one must re-load this spec before rejoining
            if not ep.up and ep.probe is None:
                ep.down_since = -math.inf

    def close(self) -> None:
        """Close every endpoint (concurrently: a dead one costs its close timeout once)."""
        if self._closed:
            return
        try:
            self._wait_inflight()
            self._revive_pool.shutdown(wait=True, cancel_futures=True)
            self._run_all([ep.backend.close for ep in self._endpoints])
        finally:
            self._shutdown()
            super().close()

    @property
    def endpoints(self) -> list[str]:
        return [ep.address for ep in self._endpoints]

    @property
    def live_endpoints(self) -> list[str]:
        return [ep.address for ep in self._endpoints if ep.up]

    @property
    def _endpoints(self) -> list[_Endpoint]:
        return self.members  # type: ignore[return-value]

    # ------------------------------------------------------------------ the members' work
    def _load_members(self, live: list[Member], spec: NetworkSpec) -> list[object]:
        def load(ep: _Endpoint) -> NetworkSpec:
            ep.backend.load(spec)
            return ep.backend.spec

        return self._run_all([(lambda ep=ep: load(ep)) for ep in live])  # type: ignore[misc]

    def _evaluate_members(
        self, plan: list[tuple[Member, list[Range]]], batch: CheckedBatch
    ) -> list[Outcome]:
        jobs = [
            (lambda ep=ep, ranges=ranges: _evaluate_ranges(ep.backend, ranges, batch))
            for ep, ranges in plan
        ]
        return [_outcome(result) for result in self._run_all(jobs)]  # type: ignore[misc]

    # ------------------------------------------------------------------ failures
    def _drop_message(self, member: Member, left: int) -> str:
        when = (
            "for good (revive_after_s=None)"
            if self.revive_after_s is None
            else f"and probed again every {self.revive_after_s:g} s"
        )
        return (
            f"dropping {member.label} from the shard set ({left} endpoint(s) left) {when}: "
            f"{member.reason}"
        )

    def _all_down(self, op: str) -> DeviceUnavailable:
        detail = "; ".join(f"{ep.address}: {ep.reason}" for ep in self._endpoints)
        return DeviceUnavailable(f"no device server of the shard set could {op}: {detail}")

    def _before_call(self) -> None:
        """Before a call: no worker still holds a socket; probes report; new probes start."""
        self._check_open()
        self._wait_inflight()
        now = time.monotonic()
        for ep in self._endpoints:
            if ep.probe is not None and ep.probe.done():
                probe, ep.probe = ep.probe, None
                try:
                    loaded = probe.result()
                except Exception as exc:  # still down (or came back wrong): try again later
                    ep.down_since, ep.reason = now, str(exc)
                    log.debug("%s is still out of the shard set: %s", ep.address, exc)
                    continue
                if loaded is not self._user_spec:  # load() ran meanwhile: probe again now
                    ep.down_since = -math.inf
                    continue
                ep.down_since, ep.reason = None, ""
                log.warning("%s answers again; it rejoins the shard set", ep.address)
            if (
                not ep.up
                and ep.probe is None
                and self.revive_after_s is not None
                and now - (ep.down_since or 0.0) >= self.revive_after_s
            ):
                ep.probe = self._revive_pool.submit(self._probe, ep, self._user_spec)

    def _probe(self, ep: _Endpoint, spec: NetworkSpec | None) -> NetworkSpec | None:
        """Background check of a dropped endpoint: alive, same precision, spec re-loaded."""
        ep.backend.ping(tries=1)
        if spec is not None:
            ep.backend.load(spec)
            if ep.backend.capabilities.precision != self.precision:
                raise DeviceError(
                    f"{ep.address} came back with precision {ep.backend.capabilities.precision}, "
                    f"the shard set uses {self.precision}"
                )
            if self._spec is not None and not same_spec(ep.backend.spec, self._spec):
                raise DeviceError(f"{ep.address} came back with a different network")
        return spec

    # ------------------------------------------------------------------ threads
    def _run_all(self, jobs: Sequence[Callable[[], T]]) -> list[T | Exception]:
        """Run jobs concurrently (inline when there is one); results or exceptions, in order.

        Every job has finished when this returns, even on Ctrl-C (the futures are kept and
        awaited before the next call), so a socket is never used by two threads."""
        if len(jobs) == 1:
            return [_capture(jobs[0])]
        futures = [self._pool.submit(_capture, job) for job in jobs]
        self._inflight = futures
        results = [f.result() for f in futures]
        self._inflight = []
        return results

    def _wait_inflight(self) -> None:
        if self._inflight:
            cf.wait(self._inflight)
            self._inflight = []

    def _abandon(self) -> None:
        """A failed open: let go of the endpoints that did open."""
        self._run_all([ep.backend.close for ep in self._endpoints])
        self._shutdown()

    def _shutdown(self) -> None:
        self._revive_pool.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _evaluate_ranges(
    backend: RemoteBackend, ranges: Sequence[Range], batch: CheckedBatch
) -> Outcome:
    """One endpoint's work in one worker thread: (counts by start, unfinished ranges, error)."""
    parts = {}
    for k, (start, stop) in enumerate(ranges):
        try:
            parts[start] = backend.run_batch(batch.sets(start, stop))
        except Exception as exc:
            return parts, list(ranges[k:]), exc
    return parts, [], None


def _outcome(result: Outcome | Exception) -> Outcome:
    """A job that failed outside ``_evaluate_ranges`` (it cannot, short of a bug)."""
    if isinstance(result, Exception):
        return {}, [], result
    return result


def _capture(job: Callable[[], T]) -> T | Exception:
    try:
        return job()
    except Exception as exc:
        return exc


def _keys_per_endpoint(curve_keys: Any, count: int) -> list[Any]:
    if isinstance(curve_keys, (list, tuple)):
        if len(curve_keys) != count:
            raise DeviceError(
                f"curve_keys lists {len(curve_keys)} key sets for {count} endpoints; give one "
                "per endpoint, or a single folder for all"
            )
        return list(curve_keys)
    if curve_keys is None or isinstance(curve_keys, (str, os.PathLike, Mapping)):
        return [curve_keys] * count
    raise DeviceError(f"curve_keys must be a folder, a mapping or a list, got {curve_keys!r}")
