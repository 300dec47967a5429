"""Real Lava processes for a NetworkSpec: V parameter sets per run, compiled once per load.

Lava env only (Python 3.10, lava-nc 0.10); never imports torch.  The graph is

    HostBridge -> Dense_0 -> LIF_0 -> Dense_1 -> LIF_1 ... -> HostBridge

with R replicas of every layer from the first varied one on and b samples side by side
(layouts: ``simulators.lava_plan``).  One evaluate = per replica group, one Lava run of
``1 + ceil(B / b) * T`` steps: a load step (parameter upload, state reset) and the samples;
the bridge zeroes every Dense buffer and LIF state between samples.

Lava 0.10 facts this module is built around (measured, see polystep_neuro/bench/lava_bench.py):
- ``Var.set`` costs ~60 us per element, so parameters travel as one message per tensor to the
  bridge, which writes them through RefPorts;
- building a graph leaks 5-15 MB of the building process (7.5 MB per 64-128-10 graph);
  graphs are kept and reused for as long as the loaded network's build-time values stay
  the same (devices.lava restarts the server process on a new structure);
- ``stop()`` hangs on a runtime that never ran and after a process-model exception: a new
  graph is run once at build, and a failed graph's processes are terminated instead.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.dense.process import Dense
from lava.proc.lif.process import LIF
from lava.utils.weightutils import SignMode

from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import DeviceError, SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators.lava_plan import (
    BINARY_INPUTS,
    DEFAULT_MAX_MATRIX_ELEMENTS,
    DEFAULT_MAX_VERTICES,
    CostModel,
    DeviceNet,
    Layout,
    Slot,
    choose_layout,
    lava_vector,
    lava_weights,
    windows_per_run,
)
from simulators.lava_procs.bridge import HostBridge, bridge_model
from simulators.loihi2_capacity import (
    ChipLimits,
    check_device_layers,
    check_one_replica,
    check_values,
    plan_runs,
)
from simulators.loihi2_capacity import fits as chip_fits

# run_cfg(select_tag, exception_proc_model_map) -> a Lava RunConfig
RunCfgFactory = Callable[[str, dict], Any]
MAX_GRAPHS = 2  # live graphs per network (e.g. one for V candidates, one for V = 1)


def sim_run_cfg(select_tag: str, exceptions: dict) -> Any:
    return Loihi2SimCfg(select_tag=select_tag, exception_proc_model_map=exceptions)


@dataclass
class _Graph:
    """One compiled Lava graph: processes, the bridge, what its slots hold now."""

    layout: Layout
    max_windows: int
    bridge: HostBridge
    run_cfg: Any
    processes: list[Any]
    slot_ids: dict[Slot, int]
    # per slot: "loaded" when it holds the loaded values, else None (unknown / a candidate)
    contents: dict[Slot, str | None] = field(default_factory=dict)
    broken: bool = False


class LavaNet:
    """Evaluates V parameter sets of a NetworkSpec on real Lava processes."""

    def __init__(
        self,
        spec: NetworkSpec,
        mode: str = "fixed_pt",
        *,
        max_vertices: int = DEFAULT_MAX_VERTICES,
        replicas: int | None = None,
        parallel: int | None = None,
        cost: CostModel | None = None,
        run_cfg: RunCfgFactory | None = None,
        max_matrix_elements: int = DEFAULT_MAX_MATRIX_ELEMENTS,
        channel_size: int = 2,
        dense_dot: bool = True,
        on_build: Callable[[list[Any]], None] | None = None,
        chip: ChipLimits | None = None,
    ) -> None:
        self.mode = mode
        # Loihi 2 capacity (loihi2 mode only): every load checks the device value ranges and
        # that one replica fits, and a V that does not fit in one graph runs in several.
        self.chip = chip
        # Lava's Dense takes the matrix-vector product path (W.dot(s)) when it expects graded
        # spikes (num_message_bits > 0): for 0/1 spikes the same integers as its default
        # column gather (no int32 overflow below 2**23 inputs), 2-4x faster on large
        # matrices.  Only for simulation: on Loihi 2 it would change the spike format.
        self.dense_dot = bool(dense_dot)
        self.on_build = on_build  # sees [Dense_0, LIF_0, ...] before compiling (monitors)
        self.max_vertices = max(1, int(max_vertices))
        self.replicas = replicas
        self.parallel = parallel
        self.cost = cost or CostModel.for_mode(mode)
        self.run_cfg = run_cfg or sim_run_cfg
        self.max_matrix_elements = int(max_matrix_elements)
        self.channel_size = int(channel_size)
        self._graphs: OrderedDict[Layout, _Graph] = OrderedDict()
        self.builds = 0  # graphs compiled so far (each leaks a little memory in Lava 0.10)
        self.timings: dict[str, float] = {}
        self.last_split: tuple[int, ...] = ()  # parameter sets per run of the last evaluate
        self.net = self._device_net(spec)
        self._loaded = self.net.loaded_arrays()

    @property
    def spec(self) -> NetworkSpec:
        """The spec as run (calibrated in fixed_pt)."""
        return self.net.spec

    # ------------------------------------------------------------------ public
    def load(self, spec: NetworkSpec) -> bool:
        """Switch to ``spec``; keeps the compiled graphs when only writable values changed.
        Returns True when they were kept."""
        net = self._device_net(spec)
        same = net.signature() == self.net.signature()
        if not same:
            self._drop_graphs()
        self.net = net
        self._loaded = net.loaded_arrays()
        for graph in self._graphs.values():
            graph.contents = dict.fromkeys(graph.contents)  # slots must be rewritten
        return same

    def evaluate(self, params: Mapping[str, Any], inputs: Any) -> np.ndarray:
        """params {name: (V, *shape)}, inputs (B, T, N_in) 0/1 -> counts (V, B, N_out)."""
        return self.run(CheckedBatch.check(self.spec, params, inputs))

    def run(self, batch: CheckedBatch) -> np.ndarray:
        """``evaluate`` of a batch already checked against this network (no second check).
        Spikes go into the bridge's int8 buffer from whatever dtype they came in (uint8 from
        a device server)."""
        if not batch.binary:
            raise SpecError(BINARY_INPUTS)
        spec, params, num_sets = self.spec, batch.params, batch.num_sets
        x = np.asarray(batch.inputs)
        arrays = self.net.replica_arrays(params, num_sets) if params else {}
        if self.chip is not None and self.net.fixed:
            for slot, values in arrays.items():
                check_values(slot.layer, slot.what, values)
        graph = self._graph_for(num_sets, x)
        r = graph.layout.replicas
        out = np.empty((num_sets, batch.batch_size, spec.n_out), dtype=np.int32)
        starts = range(0, num_sets, r) if self.net.first_varied is not None else [0]
        self.last_split = (
            tuple(min(r, num_sets - start) for start in starts)
            if self.net.first_varied is not None
            else (num_sets,)
        )
        reuse = False
        for start in starts:
            stop = min(start + r, num_sets)
            chunk = {slot: a[start:stop] for slot, a in arrays.items()}
            counts = self._run(graph, chunk, stop - start, x, reuse)
            if self.net.first_varied is None:
                out[:] = counts[:1]
            else:
                out[start:stop] = counts[: stop - start]
            reuse = True
        return out

    def close(self) -> None:
        self._drop_graphs()

    # ------------------------------------------------------------------ graphs
    def _device_net(self, spec: NetworkSpec) -> DeviceNet:
        net = DeviceNet(spec, self.mode)
        if self.chip is not None:  # before deploying: ranges, and one replica must fit
            if net.fixed:
                check_device_layers(net.layers)
            check_one_replica(net.spec, self.chip)
        return net

    def _graph_for(self, num_sets: int, x: np.ndarray) -> _Graph:
        """A live graph whose layout is within 1.5x of the best one's estimated time (no
        rebuild, no leak), else a new graph with the best layout.  With chip limits, only
        layouts that fit: V beyond the replicas that fit runs in several runs."""
        spec, batch = self.spec, x.shape[0]
        max_vertices = self.max_vertices
        fits: Callable[[Layout], bool] | None = None
        if self.chip is not None:
            plan = plan_runs(spec, num_sets, self.chip, max_per_run=self.max_vertices)
            max_vertices = plan.replicas_per_run
            fits = partial(chip_fits, spec, limits=self.chip)
        best = choose_layout(
            self.net,
            num_sets,
            batch,
            max_vertices=max_vertices,
            replicas=self.replicas,
            parallel=self.parallel,
            max_matrix_elements=self.max_matrix_elements,
            cost=self.cost,
            fits=fits,
        )
        target = self.cost.evaluate_seconds(spec, best, num_sets, batch)
        for key, graph in self._graphs.items():
            if graph.broken or (fits is not None and not fits(graph.layout)):
                continue
            if self.cost.evaluate_seconds(spec, graph.layout, num_sets, batch) <= 1.5 * target:
                self._graphs.move_to_end(key)
                return graph
        while len(self._graphs) >= MAX_GRAPHS or best in self._graphs:
            _, old = self._graphs.popitem(last=False)
            self._stop(old)
        graph = self._build(best)
        self._graphs[best] = graph
        return graph

    def _build(self, layout: Layout) -> _Graph:
        """Builds the Lava process graph in one place (long: the processes and their
        connections must be made in order)."""
        t0 = time.perf_counter()
        net, spec = self.net, self.spec
        fixed = net.fixed
        r, b = layout.replicas, layout.parallel
        processes: list[Any] = []
        state_vars: list[Any] = []
        slots: list[tuple[Any, tuple[int, ...], str, int, int, int]] = []
        slot_ids: dict[Slot, int] = {}
        slot_of = {(s.layer, s.what): s for s in net.slots}
        prev = None
        for i, dev in enumerate(net.layers):
            kind, copies = layout.kind(i), layout.copies(i)
            w = lava_weights(dev.weight[None], kind, r, b)
            dense_kw: dict[str, Any] = {"num_message_bits": 8 if self.dense_dot else 0}
            if fixed:
                dense_kw |= {
                    "weight_exp": int(dev.weight_exp),
                    "num_weight_bits": 8,
                    "sign_mode": SignMode.MIXED,
                }
            dense = Dense(weights=w, name=f"fc{i}", **dense_kw)
            n = w.shape[0]
            lif_kw: dict[str, Any] = {
                "du": int(dev.du) if fixed else float(dev.du),
                "dv": int(dev.dv) if fixed else float(dev.dv),
                "vth": int(dev.vth) if fixed else float(dev.vth),
                "bias_mant": lava_vector(dev.bias_mant[None], copies, b),
                "bias_exp": lava_vector(dev.bias_exp[None], copies, b),
            }
            lif = LIF(shape=(n,), name=f"lif{i}", **lif_kw)
            if prev is not None:
                prev.s_out.connect(dense.s_in)
            dense.a_out.connect(lif.a_in)
            prev = lif
            processes += [dense, lif]
            state_vars += [dense.a_buff, lif.u, lif.v]
            for what, var in (
                ("weight", dense.weights),
                ("bias_mant", lif.bias_mant),
                ("bias_exp", lif.bias_exp),
            ):
                slot = slot_of.get((i, what))
                if slot is None:
                    continue
                slot_ids[slot] = len(slots)
                slot_kind = kind if what == "weight" else "vector"
                slots.append((var, (r, *slot.shape), slot_kind, r, b, copies))
        assert prev is not None
        n_out = prev.s_out.shape[0]
        max_windows = windows_per_run(spec, layout)
        bridge = HostBridge(
            n_in=b * spec.n_in,
            n_out=n_out,
            steps_per_window=spec.num_steps,
            max_windows=max_windows,
            state_vars=state_vars,
            slots=slots,
            fixed=fixed,
        )
        bridge.s_out.connect(processes[0].s_in)
        prev.s_out.connect(bridge.a_in)
        if self.on_build is not None:
            self.on_build(processes)
        tag = "fixed_pt" if fixed else "floating_pt"
        run_cfg = self.run_cfg(tag, {HostBridge: bridge_model(bridge)})
        graph = _Graph(layout, max_windows, bridge, run_cfg, [bridge, *processes], slot_ids)
        graph.contents = dict.fromkeys(slot_ids, "loaded")
        try:
            bridge.create_runtime(
                run_cfg=run_cfg, compile_config={"pypy_channel_size": self.channel_size}
            )
            self.builds += 1
            # A runtime that never ran cannot be stopped (it hangs): run one empty sample.
            zeros = np.zeros((1, spec.num_steps, spec.n_in), dtype=np.int8)
            self._run(graph, {}, layout.replicas, zeros, False)
        except Exception as exc:
            graph.broken = True
            self._stop(graph)
            if isinstance(exc, DeviceError):
                raise
            raise DeviceError(f"Lava could not build the network: {exc}") from exc
        self.timings["build_s"] = time.perf_counter() - t0
        return graph

    def _run(
        self,
        graph: _Graph,
        arrays: Mapping[Slot, np.ndarray],
        count: int,
        x: np.ndarray,
        reuse_inputs: bool,
    ) -> np.ndarray:
        """One evaluate of ``count`` <= R sets on all samples: counts (count, B, N_out).
        Samples beyond one run's input budget take several runs."""
        if graph.broken:
            raise DeviceError("this Lava graph failed earlier; load the network again")
        layout, spec = graph.layout, self.spec
        r, b, steps = layout.replicas, layout.parallel, spec.num_steps
        batch = x.shape[0]
        windows = -(-batch // b)
        reuse_inputs = reuse_inputs and windows <= graph.max_windows
        # slots to write: the given arrays, padded to R by repeating the last set, and the
        # loaded values wherever a slot holds something else
        writes: dict[int, np.ndarray] = {}
        for slot, j in graph.slot_ids.items():
            if slot in arrays:
                a = arrays[slot]
                if a.shape[0] < r:
                    pad = np.repeat(a[-1:], r - a.shape[0], axis=0)
                    a = np.concatenate([a, pad])
                writes[j] = a
                graph.contents[slot] = None
            elif graph.contents.get(slot) != "loaded":
                writes[j] = np.broadcast_to(self._loaded[slot], (r, *slot.shape))
                graph.contents[slot] = "loaded"
        copies_out = layout.copies(len(spec.layers) - 1)
        counts = np.zeros((windows * b, copies_out, spec.n_out), dtype=np.int32)
        for w0 in range(0, windows, graph.max_windows):
            nw = min(graph.max_windows, windows - w0)
            xs = np.zeros((nw * b, steps, spec.n_in), dtype=np.int8)
            part = x[w0 * b : (w0 + nw) * b]
            xs[: part.shape[0]] = part
            # window w, step t: the b samples' inputs side by side
            flat = xs.reshape(nw, b, steps, spec.n_in).transpose(0, 2, 1, 3)
            t0 = time.perf_counter()
            c = self._one_run(graph, nw, None if reuse_inputs else flat, writes)
            self.timings["last_run_s"] = time.perf_counter() - t0
            counts[w0 * b : (w0 + nw) * b] = c.reshape(nw * b, copies_out, spec.n_out)
            writes = {}
            reuse_inputs = False
        return np.ascontiguousarray(counts[:batch].transpose(1, 0, 2))[:count]

    def _one_run(
        self,
        graph: _Graph,
        n_windows: int,
        x: np.ndarray | None,
        writes: Mapping[int, np.ndarray],
    ) -> np.ndarray:
        """Queue inputs and parameters, run, collect (n_windows, n_out) counts."""
        bridge = graph.bridge
        steps = 1 + n_windows * self.spec.num_steps
        mask = sum(1 << j for j in writes)
        try:
            bridge.start_run(n_windows, mask, None if x is None else np.ascontiguousarray(x))
            for j, value in writes.items():
                bridge.send_slot(j, value)
            bridge.run(condition=RunSteps(num_steps=steps), run_cfg=graph.run_cfg)
            return bridge.receive_counts(n_windows)
        except Exception as exc:
            graph.broken = True
            detail = _actor_errors(getattr(bridge, "runtime", None)) or f"{exc}"
            raise DeviceError(f"Lava run failed: {type(exc).__name__}: {detail}") from exc

    def _drop_graphs(self) -> None:
        while self._graphs:
            _, graph = self._graphs.popitem()
            self._stop(graph)

    @staticmethod
    def _stop(graph: _Graph) -> None:
        """Stop a graph's runtime; a failed one (whose stop() would hang) is killed."""
        runtime = getattr(graph.bridge, "runtime", None)
        if runtime is None:
            return
        if not graph.broken:
            done = threading.Event()

            def stop() -> None:
                try:
                    graph.bridge.stop()
                finally:
                    done.set()

            threading.Thread(target=stop, daemon=True).start()
            if done.wait(30.0):
                return
        _kill_actors(runtime)


def _actor_errors(runtime: Any) -> str:
    """The last line of each Lava worker's traceback (Lava only prints them)."""
    infra = getattr(runtime, "_messaging_infrastructure", None)
    lines = []
    for actor in list(getattr(infra, "actors", []) or []):
        try:
            error = actor.exception
        except Exception:
            continue
        if error:
            lines.append(str(error[1]).strip().splitlines()[-1])
    return "; ".join(lines)


def _kill_actors(runtime: Any) -> None:
    """Terminate the OS processes behind a Lava runtime (last resort)."""
    infra = getattr(runtime, "_messaging_infrastructure", None)
    for actor in list(getattr(infra, "actors", []) or []):
        try:
            if actor.is_alive():
                actor.terminate()
                actor.join(2.0)
        except Exception:  # already gone
            pass
    try:
        infra.smm.shutdown()  # the shared-memory manager process and its segments
    except Exception:  # never started or already down
        pass
