"""RayBackend: the V parameter sets of each evaluate split across Ray actors.

``open_backend("ray", backend="torch-sim-fixed", workers=2)`` (or ``"ray:torch-sim-fixed"``)
starts ``workers`` Ray actors; each opens its own backend with ``open_backend(backend,
**backend_options)`` inside the actor: a simulator on the actor's CPU or GPU, or a client
of a device server (``backend=["tcp://a:5555", "tcp://b:5555"]`` gives one actor per
endpoint).  Each evaluate splits V into contiguous shares (``devices.sharded.split_range``,
in proportion to ``max_sets`` when every actor reports one), sends them concurrently
and returns the counts in V order: exactly what one backend of that kind returns, since
``evaluate`` is pure per parameter set.

Only numpy and plain data cross the actor boundary (the spec as ``to_arrays()``); errors
come back as (type, message) and are re-raised with their type (``devices.ray_worker``).

The live/drop/resplit logic is ``devices.fanout.FanOut``'s (shared with the sharded
backend).

Failures.  An actor that dies (``ray.kill``, a crashed process or node), or whose backend
reports DeviceUnavailable, or that exceeds ``worker_timeout_s``, is dropped with a warning
and its share is redone on the actors still up, in the same call.  Dropped actors do not
come back (open a new backend to get them back); with none left, DeviceUnavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from devices import ray_session
from devices.catalog import RECORDS
from devices.fanout import FanOut, Member, Outcome, Range
from devices.names import resolve
from devices.ray_worker import InnerWorker, Reply
from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import DeviceError, DeviceUnavailable, error_from_name
from polystep_neuro.core.network import NetworkSpec

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0  # how long close() lets the actors close their backends


class ActorLost(Exception):
    """Internal: this actor is gone (dead, or not answering in time)."""


@dataclass(kw_only=True)
class _Actor(Member):
    """One Ray actor and the backend it runs."""

    index: int
    backend: str  # the name its open_backend got
    handle: Any  # ray.actor.ActorHandle
    caps: Capabilities | None = None
    pid: int = 0

    @property
    def label(self) -> str:
        return f"ray actor {self.index} ({self.backend})"


class RayBackend(FanOut):
    """The device contract over N Ray actors, each running one backend, V split among them."""

    name = "ray"
    losses = (ActorLost, DeviceUnavailable)
    log = log

    def __init__(self, *positional: Any, **options: Any) -> None:
        """The options (``backend`` may come by position) are the ``ray`` record's
        (``devices.catalog.RAY_OPTIONS``): ``backend``, what each actor opens (one name for
        all, or a list: one actor per entry); ``workers``, how many actors for one name;
        ``backend_options``, keywords for each actor's ``open_backend``; ``device``, the
        torch-sim device inside each actor (``"cuda"`` reserves ``num_gpus=1`` per actor
        unless given); ``cpus_per_worker``, ``num_gpus``: what Ray reserves per actor;
        ``num_cpus``: size of a local Ray this backend starts; ``address``: an existing
        cluster instead; ``start_timeout_s``, ``worker_timeout_s``: bounds on starting the
        actors and on one actor's share of an evaluate."""
        super().__init__()
        resolved = self._adopt(RECORDS["ray"], options, positional)
        names = _backend_names(resolved["backend"], resolved["workers"])
        inner_options = dict(resolved["backend_options"] or {})
        device = resolved["device"]
        if device is not None and "device" in inner_options:
            raise DeviceError("give device once: as device= or in backend_options")
        asked = inner_options.pop("device", device)
        wanted, num_gpus = _placement(asked, resolved["num_gpus"])
        per_actor = [_inner_options(name, inner_options, asked, wanted) for name in names]
        cpus_per_worker: float = resolved["cpus_per_worker"]
        self.worker_timeout_s: float | None = resolved["worker_timeout_s"]
        self._owns_ray = ray_session.acquire(resolved["address"], resolved["num_cpus"])
        try:
            if ray_session.started_local():
                _check_fits(len(names), cpus_per_worker, num_gpus)
            actor_class = ray.remote(InnerWorker).options(  # type: ignore[attr-defined]
                num_cpus=cpus_per_worker, num_gpus=num_gpus, max_restarts=0
            )
            self.members = [
                _Actor(index=i, backend=name, handle=actor_class.remote(name, inner))
                for i, (name, inner) in enumerate(zip(names, per_actor, strict=True))
            ]
            self._open_all(resolved["start_timeout_s"], cpus_per_worker, num_gpus)
            self.precision = self._one_precision("backends", "actor")
        except BaseException:
            self._shutdown()
            raise

    # ------------------------------------------------------------------ contract
    def describe(self) -> str:
        """e.g. "2 Ray actors running torch-sim-fixed (PyTorch LIF simulator on CPU)"."""
        kinds: dict[str, list[str]] = {}
        for actor in self._actors:
            device = actor.caps.device if actor.caps is not None else ""
            devices = kinds.setdefault(actor.backend, [])
            if device and device not in devices:
                devices.append(device)
        inner = "; ".join(
            f"{name} ({'; '.join(devices)})" if devices else name for name, devices in kinds.items()
        )
        lost = len(self._actors) - len(self._live())
        return f"{len(self._actors)} Ray actors running {inner}" + (
            f", {lost} of them dropped" if lost else ""
        )

    def close(self) -> None:
        """Close every actor's backend (best effort, bounded), end the actors, and Ray too
        when this backend started it and no other ray backend still uses it."""
        if self._closed:
            return
        try:
            if ray.is_initialized():  # else Ray was shut down under us: the actors are gone
                refs = [a.handle.close.remote() for a in self._actors]
                ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT_S)
        except Exception as exc:  # best effort: the actors are killed below regardless
            log.debug("closing the ray actors: %s", exc)
        finally:
            self._shutdown()
            super().close()

    # ------------------------------------------------------------------ the members' work
    def _load_members(self, live: list[Member], spec: NetworkSpec) -> list[object]:
        meta, arrays = spec.to_arrays()
        arrays_ref = ray.put(arrays)  # one copy in the object store, read by every actor
        actors: list[_Actor] = live  # type: ignore[assignment]
        outcomes = self._gather([a.handle.load.remote(meta, arrays_ref) for a in actors], actors)
        effective: list[object] = []
        for actor, outcome in zip(actors, outcomes, strict=True):
            if isinstance(outcome, Exception):
                effective.append(outcome)
                continue
            actor.caps = Capabilities.from_json(outcome["capabilities"])
            effective.append(NetworkSpec.from_arrays(outcome["meta"], outcome["arrays"]))
        return effective

    def _evaluate_members(
        self, plan: list[tuple[Member, list[Range]]], batch: CheckedBatch
    ) -> list[Outcome]:
        """One call per (actor, range), all awaited together; an actor's first failure
        stops its part."""
        inputs_ref = ray.put(batch.inputs)  # every actor reads the same object
        jobs = [(actor, share) for actor, ranges in plan for share in ranges]
        refs = [self._submit(actor, share, batch, inputs_ref) for actor, share in jobs]  # type: ignore[arg-type]
        outcomes = self._gather(refs, [actor for actor, _ in jobs])  # type: ignore[misc]
        by_actor: dict[int, Outcome] = {id(actor): ({}, [], None) for actor, _ in plan}
        for (actor, share), outcome in zip(jobs, outcomes, strict=True):
            parts, unfinished, error = by_actor[id(actor)]
            if isinstance(outcome, Exception):
                unfinished.append(share)
                by_actor[id(actor)] = (parts, unfinished, error or outcome)
            else:
                parts[share[0]] = outcome
        return [by_actor[id(actor)] for actor, _ in plan]

    def _drop_message(self, member: Member, left: int) -> str:
        actor: _Actor = member  # type: ignore[assignment]
        return (
            f"dropping ray actor {actor.index} of {len(self._actors)} ({actor.backend}, pid "
            f"{actor.pid}), {left} left to take its share: {actor.reason}"
        )

    def _all_down(self, op: str) -> DeviceUnavailable:
        detail = "; ".join(f"actor {a.index} ({a.backend}): {a.reason}" for a in self._actors)
        return DeviceUnavailable(
            f"all {len(self._actors)} Ray actors are dropped, none can {op}: {detail}. Open a "
            "new ray backend to start fresh actors"
        )

    # ------------------------------------------------------------------ inspection
    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles, in order (dropped ones too), e.g. to ``ray.kill`` one."""
        return [a.handle for a in self._actors]

    @property
    def live_workers(self) -> list[int]:
        """Indices of the actors still used."""
        return [a.index for a in self._live()]

    @property
    def worker_pids(self) -> list[int]:
        return [a.pid for a in self._actors]

    # ------------------------------------------------------------------ internals
    def _open_all(self, timeout_s: float, cpus: float, gpus: float) -> None:
        """Start the actors and open their backends; any failure fails the open."""
        refs = [a.handle.open.remote() for a in self._actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if len(ready) < len(refs):
            raise DeviceUnavailable(
                f"{len(refs) - len(ready)} of {len(refs)} Ray actors did not start within "
                f"{timeout_s:g} s: each asks for {cpus:g} CPU and {gpus:g} GPU, the cluster "
                f"has {_resources()} in all (fewer workers or smaller cpus_per_worker/num_gpus,"
                " or a larger start_timeout_s for a slow start)"
            )
        for actor, outcome in zip(self._actors, self._gather(refs, self._actors), strict=True):
            if isinstance(outcome, Exception):
                kind = DeviceUnavailable if isinstance(outcome, ActorLost) else type(outcome)
                raise kind(f"ray actor {actor.index} could not open {actor.backend!r}: {outcome}")
            actor.caps = Capabilities.from_json(outcome["capabilities"])
            actor.pid = int(outcome["pid"])

    def _submit(self, actor: _Actor, share: Range, batch: CheckedBatch, inputs_ref: Any) -> Any:
        return actor.handle.evaluate.remote(batch.sets(*share).params, inputs_ref)

    def _gather(self, refs: Sequence[Any], actors: Sequence[_Actor]) -> list[Any]:
        """Each call's value, or the exception it stands for (ActorLost for a gone actor).

        Waits for all calls at once, so a slow actor costs its own time, not the sum; an
        actor past ``worker_timeout_s`` is killed (its process may hold a hung device)."""
        late: set[int] = set()
        if self.worker_timeout_s is not None and refs:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.worker_timeout_s)
            done_ids = {id(r) for r in ready}
            late = {i for i, r in enumerate(refs) if id(r) not in done_ids}
        outcomes: list[Any] = []
        for i, (ref, actor) in enumerate(zip(refs, actors, strict=True)):
            if i in late:
                ray.kill(actor.handle, no_restart=True)
                outcomes.append(ActorLost(f"no answer within {self.worker_timeout_s:g} s"))
                continue
            try:
                outcomes.append(_unwrap(ray.get(ref)))
            except RayActorError as exc:
                outcomes.append(ActorLost(_summary(exc)))
            except RayError as exc:
                outcomes.append(DeviceError(f"ray actor {actor.index}: {_summary(exc)}"))
            except Exception as exc:  # an error the backend reported, re-raised typed
                outcomes.append(exc)
        return outcomes

    @property
    def _actors(self) -> list[_Actor]:
        return self.members  # type: ignore[return-value]

    def _shutdown(self) -> None:
        """End the actors, then Ray if this backend holds a share of a Ray it started."""
        for actor in self._actors if ray.is_initialized() else ():
            try:
                ray.kill(actor.handle, no_restart=True)
            except Exception as exc:  # already gone, or Ray is shutting down
                log.debug("ray.kill of actor %d: %s", actor.index, exc)
        if self._owns_ray:
            self._owns_ray = False
            ray_session.release()


def _inner_options(
    name: str, options: Mapping[str, Any], asked: Any, device: str
) -> dict[str, Any]:
    """What actor ``name`` opens its backend with, checked here (before any actor starts):
    ``device`` only for a backend that takes one (a device server chose its own), unless it
    was asked for, which such a backend refuses."""
    record, _ = resolve(name)
    inner = dict(options)
    if record.takes_device or asked is not None:
        inner["device"] = device
    record.check_options(inner)
    return inner


def _backend_names(backend: str | Sequence[str] | None, workers: int | None) -> list[str]:
    """One inner backend name per actor."""
    if not backend:
        raise DeviceError(
            "the ray backend needs to know what each actor runs: backend='torch-sim-fixed' "
            "(or the name 'ray:torch-sim-fixed'), or a list with one name or endpoint per actor"
        )
    if isinstance(backend, str):
        names = [backend] * (2 if workers is None else workers)
    else:
        names = [str(b) for b in backend]
        if workers is not None and workers != len(names):
            raise DeviceError(
                f"backend lists {len(names)} backends (one actor each) but workers={workers}"
            )
    if any(name == "ray" or name.startswith("ray:") for name in names):
        raise DeviceError("a ray actor cannot run another ray backend")
    return names


def _placement(device: Any, num_gpus: float | None) -> tuple[str, float]:
    """The torch-sim device inside each actor and the GPUs Ray reserves for it.

    Ray no longer hides the GPUs from an actor that reserves none, so "auto" there would
    put every actor on GPU 0 behind the scheduler's back: with no GPU reserved it is CPU."""
    wanted = "auto" if device is None else str(device)
    if num_gpus is None:
        num_gpus = 1.0 if wanted.startswith("cuda") else 0.0
    if wanted.startswith("cuda") and num_gpus == 0:
        raise DeviceError(
            f"device={wanted!r} with num_gpus=0: the actors would use a GPU Ray did not give "
            "them; set num_gpus (e.g. 1, or 0.5 to share a GPU between two actors)"
        )
    if wanted == "auto":
        wanted = "cuda" if num_gpus > 0 else "cpu"
    return wanted, float(num_gpus)


def _unwrap(reply: Reply) -> Any:
    if "error" in reply:
        kind, message = reply["error"]
        raise error_from_name(str(kind), str(message))
    return reply["ok"]


def _check_fits(count: int, cpus: float, gpus: float) -> None:
    """A local Ray cannot grow: refuse at once what it could never schedule."""
    have = ray.cluster_resources()
    for what, each in (("CPU", cpus), ("GPU", gpus)):
        if count * each > have.get(what, 0.0):
            raise DeviceError(
                f"{count} Ray actors asking for {each:g} {what} each do not fit the local Ray "
                f"({have.get(what, 0.0):g} {what}): use fewer workers, a smaller "
                f"{'cpus_per_worker' if what == 'CPU' else 'num_gpus'}, or a larger num_cpus"
            )


def _resources() -> str:
    have = ray.cluster_resources()
    return ", ".join(f"{have.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))


def _summary(exc: BaseException) -> str:
    """Ray's multi-line errors in one line: what happened, and the closing "because"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
