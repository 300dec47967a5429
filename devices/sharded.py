"""ShardedBackend: one evaluate spread over several device servers (scale-out).

``open_backend(["tcp://a:5555", "tcp://b:5555"])`` (or ``"tcp://a:5555,tcp://b:5555"``)
splits the V parameter sets of each evaluate into contiguous shards, one per endpoint,
sized in proportion to each endpoint's ``max_sets`` when every endpoint reports one
(e.g. how many replicas fit on a chip) and equal otherwise.  Every endpoint gets all B
inputs; the shards run concurrently (one worker thread per endpoint, each RemoteBackend
with its own socket, so no socket is ever shared) and the counts are gathered in V order.
The result is exactly what one server would return: ``evaluate`` is pure per parameter set.

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

import numpy as np

from devices.base import BaseBackend
from devices.remote import RemoteBackend
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable, PolystepError
from polystep_neuro.core.network import NetworkSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
Range = tuple[int, int]


@dataclass
class _Endpoint:
    """One device server in the set, and whether it is currently used."""

    address: str
    backend: RemoteBackend
    down_since: float | None = None  # time.monotonic() when dropped; None while up
    reason: str = ""
    probe: cf.Future[NetworkSpec | None] | None = None

    @property
    def up(self) -> bool:
        return self.down_since is None


class ShardedBackend(BaseBackend):
    """The device contract over several ``devices.server`` endpoints, V split among them."""

    is_remote = True

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        revive_after_s: float | None = 30.0,
        curve_keys: Any = None,
        **remote_options: Any,
    ) -> None:
        """``remote_options`` go to every RemoteBackend (timeout_s, retries, ...);
        ``curve_keys`` is one key folder/mapping for all, or a list with one per endpoint."""
        super().__init__()
        addresses = [str(e).strip() for e in endpoints]
        if not addresses:
            raise DeviceUnavailable("a sharded backend needs at least one endpoint")
        if len(set(addresses)) != len(addresses):
            raise DeviceError(f"an endpoint is listed twice in {addresses}")
        if revive_after_s is not None and revive_after_s < 0:
            raise DeviceError("revive_after_s must be >= 0 (or None: never re-admit)")
        keys = _keys_per_endpoint(curve_keys, len(addresses))
        self.name = f"sharded {','.join(addresses)}"
        self.revive_after_s = revive_after_s
        remote_options["connect"] = True  # capabilities are needed now (precision check)
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
        self._endpoints = [_Endpoint(a, r) for a, r in pairs if not isinstance(r, Exception)]
        if failed:
            self._abandon()
            if not all(isinstance(exc, PolystepError) for _, exc in failed):
                raise next(exc for _, exc in failed if not isinstance(exc, PolystepError))
            detail = "; ".join(f"{a}: {exc}" for a, exc in failed)
            raise type(failed[0][1])(
                f"cannot shard over {len(addresses)} endpoints, {len(failed)} failed at open "
                f"(start them, or leave them out of the list): {detail}"
            )
        precisions = {ep.backend.capabilities.precision for ep in self._endpoints}
        if len(precisions) > 1:
            listing = ", ".join(
                f"{ep.address} = {ep.backend.capabilities.precision} "
                f"({ep.backend.capabilities.name})"
                for ep in self._endpoints
            )
            self._abandon()
            raise DeviceError(
                f"cannot shard across endpoints of different precision ({listing}): counts "
                "would depend on which server a parameter set landed on; use servers of one "
                "precision (e.g. all torch-sim-fixed / lava-fixed / loihi2)"
            )
        self.precision = precisions.pop()

    # ------------------------------------------------------------------ contract
    @property
    def capabilities(self) -> Capabilities:
        caps = [ep.backend.capabilities for ep in self._endpoints]
        names = sorted({c.name for c in caps})
        limits = [c.max_sets for c in caps]
        return Capabilities(
            name=names[0] if len(names) == 1 else "+".join(names),
            precision=self.precision,
            max_sets=None if None in limits else sum(int(m or 0) for m in limits),
            writable=common_writable(caps),
            is_remote=True,
            device=self.describe(),
            address=",".join(self.endpoints),
        )

    def describe(self) -> str:
        up = sum(ep.up for ep in self._endpoints)
        parts = [ep.backend.describe() + ("" if ep.up else " (down)") for ep in self._endpoints]
        return f"{len(self._endpoints)} device servers, {up} up: " + "; ".join(parts)

    def load(self, spec: NetworkSpec) -> None:
        """Load on every endpoint that is up; they must agree on the effective network."""
        self._check_open()
        spec.validate()
        self._settle()
        live = self._live()
        results = self._run_all([(lambda ep=ep: ep.backend.load(spec)) for ep in live])
        self._raise_unless_unavailable(results)
        loaded = []
        for ep, result in zip(live, results, strict=True):
            if isinstance(result, DeviceUnavailable):
                self._drop(ep, result)
            else:
                loaded.append(ep)
        if not loaded:
            raise self._all_down("load")
        reference = loaded[0].backend.spec
        for ep in loaded[1:]:
            if not _same_spec(ep.backend.spec, reference):
                raise DeviceError(
                    f"{ep.address} loaded a different network than {loaded[0].address} (e.g. "
                    "another fixed-point calibration): run the same polystep-neuro version "
                    "and backend kind on every server"
                )
        self._spec, self._user_spec = reference, spec
        for ep in self._endpoints:  # a dropped one must re-load this spec before rejoining
            if not ep.up and ep.probe is None:
                ep.down_since = -math.inf

    def run_batch(self, batch: CheckedBatch) -> np.ndarray:
        """Counts (V, B, N_out) int32, exactly as one server would return them.  The batch
        is checked once, here; each endpoint gets its shares of it unchecked."""
        wire = batch.for_wire()
        num_sets = wire.num_sets
        self._settle()
        done: dict[int, np.ndarray] = {}
        pending: list[Range] = [(0, num_sets)]
        while pending:
            live = self._live()
            if not live:
                raise self._all_down("evaluate")
            plan: dict[int, list[Range]] = {}
            for start, stop in pending:
                shares = split_range(start, stop, self._weights(live))
                for index, share in enumerate(shares):
                    if share[1] > share[0]:
                        plan.setdefault(index, []).append(share)
            jobs = [
                (lambda ep=live[i], ranges=ranges: _evaluate_ranges(ep.backend, ranges, wire))
                for i, ranges in plan.items()
            ]
            results = self._run_all(jobs)
            pending = []
            errors = []
            for (index, _), (parts, failed, error) in zip(plan.items(), results, strict=True):
                done.update(parts)
                pending.extend(failed)
                if isinstance(error, DeviceUnavailable):
                    self._drop(live[index], error)
                elif error is not None:
                    errors.append(error)
            if errors:
                raise errors[0]
        if len(done) == 1:
            return done[0]
        return np.concatenate([done[start] for start in sorted(done)])

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

    # ------------------------------------------------------------------ failures
    def _drop(self, ep: _Endpoint, exc: BaseException) -> None:
        ep.down_since, ep.reason = time.monotonic(), str(exc)
        others = sum(other.up for other in self._endpoints)
        when = (
            "for good (revive_after_s=None)"
            if self.revive_after_s is None
            else f"and probed again every {self.revive_after_s:g} s"
        )
        log.warning(
            "dropping %s from the shard set (%d endpoint(s) left) %s: %s",
            ep.address,
            others,
            when,
            exc,
        )

    def _all_down(self, op: str) -> DeviceUnavailable:
        detail = "; ".join(f"{ep.address}: {ep.reason}" for ep in self._endpoints)
        return DeviceUnavailable(f"no device server of the shard set could {op}: {detail}")

    def _settle(self) -> None:
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
            if self._spec is not None and not _same_spec(ep.backend.spec, self._spec):
                raise DeviceError(f"{ep.address} came back with a different network")
        return spec

    # ------------------------------------------------------------------ helpers
    def _live(self) -> list[_Endpoint]:
        return [ep for ep in self._endpoints if ep.up]

    @staticmethod
    def _weights(live: Sequence[_Endpoint]) -> list[int]:
        return share_weights([ep.backend.capabilities for ep in live])

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

    @staticmethod
    def _raise_unless_unavailable(results: Sequence[Any]) -> None:
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, DeviceUnavailable):
                raise result

    def _abandon(self) -> None:
        """A failed open: let go of the endpoints that did open."""
        self._run_all([ep.backend.close for ep in self._endpoints])
        self._shutdown()

    def _shutdown(self) -> None:
        self._revive_pool.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


def split_range(start: int, stop: int, weights: Sequence[int]) -> list[Range]:
    """Contiguous pieces of [start, stop) proportional to ``weights`` (largest remainder).

    Deterministic, so the same V on the same endpoints always lands the same way."""
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


def _evaluate_ranges(
    backend: RemoteBackend, ranges: Sequence[Range], batch: CheckedBatch
) -> tuple[dict[int, np.ndarray], list[Range], BaseException | None]:
    """One endpoint's work in one worker thread: (counts by start, unfinished ranges, error)."""
    parts: dict[int, np.ndarray] = {}
    for k, (start, stop) in enumerate(ranges):
        try:
            parts[start] = backend.run_batch(batch.sets(start, stop))
        except Exception as exc:
            return parts, list(ranges[k:]), exc
    return parts, [], None


def _capture(job: Callable[[], T]) -> T | Exception:
    try:
        return job()
    except Exception as exc:
        return exc


def _same_spec(a: NetworkSpec, b: NetworkSpec) -> bool:
    meta_a, arrays_a = a.to_arrays()
    meta_b, arrays_b = b.to_arrays()
    return (
        meta_a == meta_b
        and arrays_a.keys() == arrays_b.keys()
        and all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    )


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
