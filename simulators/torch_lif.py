"""Batched LIF simulator: V parameter sets x B samples x T steps in one pass (CPU or CUDA).

Two arithmetics, each a :class:`~simulators.lif_precision.Precision` chosen once when the
simulator is built (``float32``: snnTorch's float LIF; ``loihi-fixed``: Lava's bit-accurate
Loihi 2 integers, so a GPU can stand in for the chip).

``run`` takes a :class:`~polystep_neuro.core.batch.CheckedBatch`, checked once where the call
entered (a backend's ``evaluate``); ``evaluate`` checks raw arrays and runs them.

Speed: every Dense projection is one GEMM over the timesteps it covers (the network is
feed-forward, so a layer's spikes are known before the next layer reads them); only the
neuron update loops over time (simulators.lif_dynamics).  Layers before the first varied
parameter are computed once and shared by all V sets (simulators.param_groups).  On one
CPU thread the distinct sets go through the network in blocks, a few steps at a time
through every layer, sized so a block's synaptic input, state and spikes stay in cache: a
layer's whole (V, T, B, N) input and spike trains are never written to memory when the
next layer reads them.  On CUDA, and with several CPU threads, one block holds every set
and step (fewer, larger kernels; see TorchLIF.blocking).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.batch import CheckedBatch
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec, split_param_name
from simulators import fixed_point as fp
from simulators.lif_dynamics import (
    FixedLIF,
    FloatLIF,
    LowRankRows,
    inverse,
    like,
    physical_order,
)
from simulators.lif_kernels import MAX_FUSED_RANK
from simulators.lif_precision import (
    PRECISIONS as _MODELS,
)
from simulators.lif_precision import (
    Neurons,
    Precision,
    int8_gemm_exact,
    precision_named,
    quantized_weight,
)
from simulators.param_groups import distinct_sets
from simulators.torch_device import resolve_device  # (also imported from here)

PRECISIONS = tuple(_MODELS)
# On one CPU thread, neuron-state elements (sets x B x N of the widest layer) per block:
# 64 Ki float32 (256 KiB) per step; and steps per chunk: a block's GEMM output and spikes
# for a chunk (about 1.3 MiB each) stay in cache until the neuron update and the next
# layer read them.  See TorchLIF.blocking.
CPU_BLOCK_ELEMENTS = 1 << 16
CPU_TIME_BLOCK = 5
# An int8 GEMM of 0/1 spikes sums fewer than this many weights (|w| <= 128) within int32.
_INT8_MAX_IN = (1 << 31) // 128
_NARROW = 32  # layers narrower than this GEMM as W.x^T where the sums are exact

__all__ = [
    "CPU_BLOCK_ELEMENTS",
    "CPU_TIME_BLOCK",
    "PRECISIONS",
    "SimResult",
    "TorchLIF",
    "quantized_weight",
    "resolve_device",
]


@dataclass
class SimResult:
    """Output counts, and per-layer traces when recorded.

    counts: (V, B, N_out) int32 spike counts over the T steps.
    spikes / voltages / currents: one (V, B, T, N) tensor per layer (``record=True``);
    voltages are after the reset of the step (what Lava's ``v`` Var holds), and in
    ``loihi-fixed`` mode they are the device integers (int64).
    """

    counts: torch.Tensor
    spikes: list[torch.Tensor] | None = None
    voltages: list[torch.Tensor] | None = None
    currents: list[torch.Tensor] | None = None


class _Workspace:
    """Reusable flat buffers, one per purpose, grown on demand.

    Fresh multi-megabyte CPU tensors cost page faults on every evaluate (more than the GEMM
    writing into them); an adaptation run evaluates the same shapes thousands of times.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._flat: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        flat = self._flat.get((tag, dtype))
        if flat is None or flat.numel() < numel:
            flat = torch.empty(numel, dtype=dtype, device=self.device)
            self._flat[(tag, dtype)] = flat
        return flat[:numel].view(shape)


@dataclass
class _Layer:
    """One layer of a run: parameters per distinct group of sets, and where its input is."""

    index: int
    spec: LayerSpec
    weight: torch.Tensor  # float32 (groups or 1, n_out, n_in); quantised per block if fixed
    gemm_dtype: torch.dtype  # the GEMM's (loihi-fixed: float32 where its sums are exact)
    neurons: Neurons
    groups: int
    in_groups: int
    source: torch.Tensor | None  # input group of each group; None: the same index, or shared
    set_group: torch.Tensor  # (V,) group of every parameter set after this layer
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None  # (U, Vt) per group: W = base + U Vt
    low_rank_base: torch.Tensor | None = None  # float32 (1, n_out, n_in); None: the loaded W

    @property
    def continues(self) -> bool:
        """Reads the previous layer's groups one to one, so it can share its block loop."""
        return self.source is None and self.groups == self.in_groups


class TorchLIF:
    """Evaluates a NetworkSpec for many parameter sets at once.

    ``run(batch)`` takes a :class:`CheckedBatch`: ``params`` as ``{name: (V, *shape)}``
    (only writable names; others keep the spec's values) and ``inputs`` as ``(B, T, N_in)``,
    checked against ``self.spec``.  ``evaluate(params, inputs)`` checks raw arrays once
    and runs them.  ``precision`` names the arithmetic (``PRECISIONS``), fixed for the
    simulator's life.  ``block_elements`` bounds the neuron state a block of sets updates
    per step and ``time_block`` the steps per chunk (defaults: see ``blocking``);
    loihi-fixed results never depend on them, float32 ones only through GEMM rounding.
    ``int8_gemm``: loihi-fixed GEMMs as int8 x int8 -> int32 (exact, and several times the
    float32 rate where the CPU has int8 dot products); None: wherever the precision allows
    it and ``int8_gemm_exact`` holds for the device, False: the float reference path.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        precision: str = "float32",
        device: str | torch.device | None = "cpu",
        block_elements: int | None = None,
        time_block: int | None = None,
        int8_gemm: bool | None = None,
    ) -> None:
        self.model: Precision = precision_named(precision)
        self.spec = self.model.prepare(spec)
        self.precision = self.model.name
        self.device = resolve_device(device)
        self.block_elements = block_elements
        self.time_block = time_block
        int8_ok = self.model.int8_unit is not None and int8_gemm_exact(self.device.type)
        if int8_gemm and not int8_ok:
            raise SpecError(f"no exact int8 GEMM for {self.precision} on {self.device.type}")
        self.int8_gemm = int8_ok if int8_gemm is None else int8_gemm
        self._work = _Workspace(self.device)
        self._base = {
            name: torch.as_tensor(np.asarray(value), device=self.device).unsqueeze(0)
            for name, value in self.spec.parameters().items()
        }

    # ------------------------------------------------------------------ public
    def run(
        self,
        batch: CheckedBatch,
        *,
        record: bool = False,
        low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
        low_rank_base: torch.Tensor | None = None,
    ) -> SimResult:
        """Counts (and traces with ``record``) of a batch checked against ``self.spec``.
        ``low_rank``, ``low_rank_base``: see ``evaluate_low_rank``."""
        layers = self._plan(batch.params, batch.num_sets)
        if low_rank is not None:
            first = layers[0]
            sets = torch.arange(batch.num_sets, device=self.device)
            rep = torch.full((first.groups,), batch.num_sets, device=self.device)
            rep = rep.scatter_reduce(0, first.set_group, sets, "amin")
            first.low_rank = (low_rank[0][rep], low_rank[1][rep])
            first.low_rank_base = low_rank_base
        x = self._prepare_inputs(batch)
        traces: list[tuple[torch.Tensor, ...]] = []
        with self.model.matmul():
            start = 0
            while start < len(layers):
                stop = start + 1
                while stop < len(layers) and layers[stop].continues:
                    stop += 1
                x, counts = self._segment(layers[start:stop], x, record, traces)
                start = stop
        group = layers[-1].set_group
        counts = _per_set(counts, group)
        if not record:
            return SimResult(counts=counts)
        by_set = [
            [_per_set(_batch_major(trace), layer.set_group) for trace in layer_traces]
            for layer, layer_traces in zip(layers, traces, strict=True)
        ]
        return SimResult(
            counts=counts,
            spikes=[t[0] for t in by_set],
            voltages=[t[1] for t in by_set],
            currents=[t[2] for t in by_set],
        )

    def evaluate(
        self, params: Mapping[str, Any] | None, inputs: Any, *, record: bool = False
    ) -> SimResult:
        """``run`` of raw arrays: checked once against ``self.spec`` (SpecError), then run."""
        return self.run(CheckedBatch.check(self.spec, params or {}, inputs), record=record)

    def evaluate_low_rank(
        self,
        params: Mapping[str, Any] | None,
        u: torch.Tensor,
        vt: torch.Tensor,
        inputs: Any,
        *,
        record: bool = False,
        base: Any | None = None,
    ) -> SimResult:
        """Set v's ``fc0.weight`` is ``base`` (float32 only; default: the loaded one) plus
        ``u[v] @ vt[v]`` (``u``: (V, n_out, r), ``vt``: (V, r, n_in)), and the first layer's
        synaptic input is computed as x W^T + (x Vt^T) U^T: the base product once for all
        sets, and per set only rank-r products, instead of one full GEMM per set.  The sets
        are grouped by their factors, so the summed weights (V x n_out x n_in) are never
        formed.

        float32: float rounding differs from ``evaluate`` on the summed weights unless every
        sum is exact.  loihi-fixed: quantising W + U Vt per set is not linear in the
        factors, so the probe lives on the device's integer grid instead: ``u`` and ``vt``
        hold integers, and set v's device weights are the loaded network's plus
        ``2 * u[v] @ vt[v]`` (device weights are even).  Every sum is then an integer, and
        the counts equal ``evaluate``'s on :meth:`low_rank_weights` bit for bit."""
        if "fc0.weight" in (params or {}):
            raise SpecError("fc0.weight comes from the loaded weights and the factors")
        u, vt = self._low_rank_factors(u, vt)
        batch = CheckedBatch.check(self.spec, params or {}, inputs)
        sets = u.shape[0]
        if batch.params and batch.num_sets != sets:
            raise SpecError(f"the factors hold {sets} sets, the parameters {batch.num_sets}")
        # The sets are grouped by their factors: equal factors, equal first-layer weights.
        # The summed weights (V x n_out x n_in) are never formed.
        stand_in = torch.cat([u.flatten(1), vt.flatten(1)], dim=1)
        batch = CheckedBatch(
            {**batch.params, "fc0.weight": stand_in}, inputs, sets, batch.batch_size
        )
        if self.model.exact:
            u = u * 2.0  # halves -> device weight units
        return self.run(batch, record=record, low_rank=(u, vt), low_rank_base=self._base_of(base))

    def _base_of(self, base: Any | None) -> torch.Tensor | None:
        """``base`` as float32 (1, n_out, n_in) on the device; SpecError for another shape,
        non-finite values, or any base in loihi-fixed (its factors are device weight steps
        from the loaded network's device weights)."""
        if base is None:
            return None
        if self.model.exact:
            raise SpecError("loihi-fixed low-rank probes start from the loaded weights (no base)")
        n_out, n_in = self.spec.layers[0].n_out, self.spec.layers[0].n_in
        w = torch.as_tensor(base, device=self.device).to(torch.float32)
        if w.shape not in ((n_out, n_in), (1, n_out, n_in)):
            raise SpecError(f"the base must be ({n_out}, {n_in}), got {tuple(w.shape)}")
        if not _all_finite(w):
            raise SpecError("the base contains non-finite values")
        return w.reshape(1, n_out, n_in)

    def _low_rank_factors(self, u: Any, vt: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_as_factors`, and in loihi-fixed a SpecError for factors that could move a
        device weight out of its 8-bit range (a clipped sum is not low-rank)."""
        u, vt = self._as_factors(u, vt)
        if self.model.exact:
            # |(u vt)_ij| <= sum_r max|u_.r| max|vt_r.|: only where that bound could leave
            # the range are the sums formed and checked one by one.
            bound = (u.abs().amax(dim=1) * vt.abs().amax(dim=2)).sum(dim=1).max()
            if float(self._loaded_halves().abs().max() + bound) > fp.WEIGHT_MAX // 2:
                self.low_rank_weights(u, vt)  # raises where a weight leaves the range
        return u, vt

    def _as_factors(self, u: Any, vt: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``u`` (V, n_out, r) and ``vt`` (V, r, n_in) as float32 on the device; SpecError for
        other shapes, and in loihi-fixed for factors that are not integers."""
        u = torch.as_tensor(u, dtype=torch.float32, device=self.device)
        vt = torch.as_tensor(vt, dtype=torch.float32, device=self.device)
        n_out, n_in = self.spec.layers[0].n_out, self.spec.layers[0].n_in
        if (
            u.ndim != 3 or vt.ndim != 3 or u.shape[0] != vt.shape[0] or u.shape[2] != vt.shape[1]
            or u.shape[1] != n_out or vt.shape[2] != n_in
        ):  # fmt: skip
            raise SpecError(f"factors must be (V, {n_out}, r) and (V, r, {n_in}), got "
                            f"{tuple(u.shape)} and {tuple(vt.shape)}")  # fmt: skip
        if self.model.exact and not (torch.equal(u, u.round()) and torch.equal(vt, vt.round())):
            raise SpecError("loihi-fixed low-rank factors must hold integers (device weight steps)")
        return u, vt

    def _loaded_halves(self) -> torch.Tensor:
        """The loaded first layer's device weights / 2 (float64 integers)."""
        base = self._base["fc0.weight"][0].double().cpu().numpy()
        halves = fp.quantize_weight(base, self.spec.layers[0]) / 2.0
        return torch.as_tensor(halves, device=self.device)

    def low_rank_weights(self, u: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
        """The first layer's weights (V, n_out, n_in) that ``evaluate_low_rank``'s factors
        stand for, as ``evaluate`` takes them: the loaded weights plus ``u @ vt`` in float32;
        in loihi-fixed, the float weights that quantise exactly to the loaded device weights
        plus ``2 * u @ vt`` (SpecError where the factors are not integers or a weight leaves
        the device's 8-bit range: a clipped sum is not low-rank)."""
        u, vt = self._as_factors(u, vt)
        if not self.model.exact:
            return self._base["fc0.weight"].float() + torch.bmm(u, vt)
        moved = self._loaded_halves()[None] + torch.bmm(u.double(), vt.double())
        if bool((moved.abs() > fp.WEIGHT_MAX // 2).any()):
            raise SpecError(
                "a set's first-layer weights leave the device's 8-bit range (a clipped sum is "
                "not low-rank): smaller factors, or a calibration with room for them"
            )
        return (moved * (2.0 / fp.weight_factor(self.spec.layers[0]))).float()

    def counts(self, params: Mapping[str, Any] | None, inputs: Any) -> torch.Tensor:
        return self.evaluate(params, inputs).counts

    def blocking(self) -> tuple[int | None, int | None]:
        """(block_elements, time_block) for the next run; None: everything at once.

        Cache-sized blocks and chunks on CPU with one intra-op thread.  With several
        threads, or on CUDA, one block of every set and step: many small ops each pay a
        barrier across threads, which on a loaded machine costs a scheduler slice (the
        quick demo test took 80 to 437 s instead of 28 to 65 s at 2 threads with 64 Ki
        blocks on a 2-core machine under load 3-5).  Sizes passed in are always used.
        """
        block, steps = self.block_elements, self.time_block
        if self.device.type != "cpu" or (
            block is None and steps is None and torch.get_num_threads() > 1
        ):
            return block, steps
        return block or CPU_BLOCK_ELEMENTS, steps or CPU_TIME_BLOCK

    # ------------------------------------------------------------------ planning
    def _plan(self, params: Mapping[str, Any], num_sets: int) -> list[_Layer]:
        """Group the sets per layer: sets that agree on every varied parameter of a prefix
        share its computation — PolyStep's candidates differ in one block each, so most
        prefixes are shared."""
        resolved = self._resolve(params)
        varied = {split_param_name(name) for name in params}
        group = torch.zeros(num_sets, dtype=torch.long, device=self.device)
        in_groups = 1
        layers = []
        for i, layer in enumerate(self.spec.layers):
            lp = {attr: v for (index, attr), v in resolved.items() if index == i}
            layer_varied = sorted(attr for index, attr in varied if index == i)
            groups, source = in_groups, None
            if layer_varied:
                rep, inv = distinct_sets(group, [lp[attr] for attr in layer_varied])
                if rep.numel() < num_sets:  # all distinct: rep is 0..V-1, no copy needed
                    for attr in layer_varied:
                        lp[attr] = lp[attr][rep]
                groups = rep.numel()
                if in_groups > 1 and not _is_identity(group[rep], in_groups):
                    source = group[rep]  # the input group each distinct set reads
                group = inv
            layers.append(
                _Layer(
                    i,
                    layer,
                    lp["weight"],
                    self.model.gemm_dtype(layer),
                    self.model.neurons(lp, layer),
                    groups,
                    in_groups,
                    source,
                    group,
                )  # fmt: skip
            )
            in_groups = groups
        return layers

    def _resolve(self, params: Mapping[str, Any]) -> dict[tuple[int, str], torch.Tensor]:
        """Every parameter keyed by (layer, attribute), passed sets over loaded values."""
        out = {split_param_name(name): value for name, value in self._base.items()}
        for name, value in params.items():
            t = torch.as_tensor(value, device=self.device)
            if not t.is_floating_point():
                t = t.to(torch.float32)
            if not _all_finite(t):
                bad = int((~torch.isfinite(t)).sum())
                raise SpecError(f"parameter {name!r} contains {bad} non-finite value(s)")
            out[split_param_name(name)] = t.to(torch.float32)
        return out

    def _prepare_inputs(self, batch: CheckedBatch) -> torch.Tensor:
        """(T, 1, B, N_in) float32 on the device; SpecError for values the arithmetic
        cannot take."""
        x = torch.as_tensor(batch.inputs, device=self.device)
        x = x.to(torch.float32)
        self.model.check_inputs(x, batch)
        return x.permute(1, 0, 2).unsqueeze(1).contiguous()  # (T, 1, B, N_in)

    # ------------------------------------------------------------------ execution
    def _segment(
        self,
        layers: list[_Layer],
        x: torch.Tensor,
        record: bool,
        traces: list[tuple[torch.Tensor, ...]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layers that share one grouping, block of groups by block of groups.

        ``x``: the input spikes, logical (T, in_groups, B, n_in).  Returns the last layer's
        spike trains (T, groups, B, n) when another layer reads them (else ``x``) and its
        spike counts (groups, B, n) when it is the network's output layer (else empty).
        """
        steps, batch = x.shape[0], x.shape[2]
        groups, last = layers[0].groups, layers[-1]
        is_output = last.index == len(self.spec.layers) - 1
        widest = max(layer.spec.n_out for layer in layers)
        block, tau = groups, steps
        block_elements, time_block = self.blocking()
        if block_elements is not None:
            block = max(1, min(groups, block_elements // (batch * widest)))
        if time_block is not None:
            tau = max(1, min(steps, time_block))
        # Full traces where something reads them after this segment; chunks elsewhere.
        full: dict[int, list[torch.Tensor]] = {}
        for layer in layers:
            if record or (layer is last and not is_output):
                kinds = 3 if record else 1
                full[layer.index] = [
                    self._trace(layer, steps, groups, batch, k, record) for k in range(kinds)
                ]
        counts = torch.empty(0, dtype=torch.int32, device=self.device)
        if is_output:
            counts = torch.zeros(
                (groups, batch, last.spec.n_out), dtype=torch.int32, device=self.device
            )
        first = layers[0]
        shared = None  # the first layer's W.s for every group at once, where that pays
        low = None  # a low-rank first layer: its base product for all groups, U, Vt
        w = first.weight
        if first.low_rank is not None:
            u, vt = first.low_rank
            base = self._project(x, self._low_rank_base(first), first, "l0.base")
            ut = u.transpose(1, 2).contiguous()  # (S, r, n_out): rows the passes read
            low = (base, _times_factors(x, vt, self._work, "l0.factors"), ut)
        elif first.in_groups == 1 and (w.shape[0] == 1 or w.shape[2] > w.shape[1]):
            w = self._weights(first, 0, w.shape[0], "all")
            shared = self._project(x, w, first, f"l{first.index}")
        for g0 in range(0, groups, block):
            g1 = min(groups, g0 + block)
            out = counts[g0:g1] if is_output else None
            x_block = self._block_input(first, x, g0, g1)
            self._block(layers, x_block, g0, g1, tau, shared, full, out, low)
        if record:
            traces += [tuple(full[layer.index]) for layer in layers]
        out_last = full.get(last.index)
        return (out_last[0] if out_last is not None else x), counts

    def _block(
        self,
        layers: list[_Layer],
        x: torch.Tensor,
        g0: int,
        g1: int,
        tau: int,
        shared: torch.Tensor | None,
        full: dict[int, list[torch.Tensor]],
        counts: torch.Tensor | None,
        low: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Groups [g0, g1) through ``layers``, ``tau`` steps at a time.

        Layer j runs steps [k * tau + lag_j, (k + 1) * tau + lag_j) in chunk k, lag_j being
        the summed delays up to it (chunk 0 also runs the steps before): those read exactly
        the rows the layer before wrote in the same chunk, so nothing is carried over.
        Spikes go to ``full`` traces where given (else a chunk buffer), and the output
        layer's spike counts are added to ``counts``.
        Long because it is the hot loop over time chunks and layers; splitting it costs
        calls per chunk.
        """
        steps, batch = x.shape[0], x.shape[2]
        lag = list(itertools.accumulate(layer.spec.delay for layer in layers))
        runners: list[FloatLIF | FixedLIF] = []
        chunks: list[torch.Tensor | None] = []
        weights: list[torch.Tensor | None] = []
        for j, layer in enumerate(layers):
            use_shared = j == 0 and (shared is not None or low is not None)
            weights.append(None if use_shared else self._weights(layer, g0, g1, "block"))
            chunk = None
            if layer.index in full:
                template = full[layer.index][0][0, g0:g1]
            else:
                rows = min(steps, tau + lag[j])  # chunk 0 is the longest
                chunk = self._chunk(layer, shared if j == 0 else None, rows, g0, g1, batch)
                template = chunk[0]
            chunks.append(chunk)
            buffer = self._buffers(f"l{layer.index}")
            q = layer.neurons.take(g0, g1)
            runners.append(self.model.runner(layer.spec, q, template, buffer, layer.gemm_dtype))
        k, done = 0, False
        while not done:
            prev, prev_lo = x, 0
            for j, layer in enumerate(layers):
                lo = 0 if k == 0 else k * tau + lag[j]
                hi = min(steps, (k + 1) * tau + lag[j])
                if j == 0:
                    done = hi == steps
                if lo >= hi:
                    break
                delay = layer.spec.delay
                r0, r1 = max(lo - delay, 0), hi - delay  # input rows these steps read
                acc, row0 = None, 0
                if j == 0 and shared is not None:
                    acc = shared if shared.shape[1] == 1 else shared[:, g0:g1]
                elif j == 0 and low is not None and r1 > r0:
                    base, xv, ut = low
                    rows = (base[r0:r1], xv[g0:g1, r0:r1], ut[g0:g1])
                    acc = LowRankRows(  # type: ignore[assignment]
                        *rows, lambda rows=rows: _project_low_rank(*rows, self._work, "l0")
                    )
                    row0 = r0
                elif r1 > r0:
                    w = weights[j]
                    assert w is not None
                    rows_in = prev[r0 - prev_lo : r1 - prev_lo]
                    acc = self._project(rows_in, w, layer, f"l{layer.index}")
                    row0 = r0
                out, chunk = full.get(layer.index), chunks[j]
                volts = currs = None
                if out is not None:
                    spikes = out[0][lo:hi, g0:g1]
                    if len(out) == 3:
                        volts, currs = out[1][lo:hi, g0:g1], out[2][lo:hi, g0:g1]
                else:
                    assert chunk is not None
                    spikes = chunk[: hi - lo]
                runners[j].steps(lo, hi, acc, row0, spikes, volts, currs)
                if counts is not None and j == len(layers) - 1:
                    counts += spikes.sum(dim=0, dtype=torch.int32)
                prev, prev_lo = spikes, lo
            k += 1

    def _weights(self, layer: _Layer, g0: int, g1: int, purpose: str) -> torch.Tensor:
        """Groups [g0, g1)'s weights for the GEMM (all of them when shared): loihi-fixed ones
        quantised here, a block at a time, so the float64 arithmetic stays in cache."""
        w = layer.weight if layer.weight.shape[0] == 1 else layer.weight[g0:g1]
        tag = f"l{layer.index}.{purpose}"
        if self.int8_gemm and layer.spec.n_in < _INT8_MAX_IN:
            return self.model.int8_weights(w, layer.spec, self._work, tag)
        return self.model.weights(w, layer.spec, layer.gemm_dtype, self._work, tag)

    def _low_rank_base(self, first: _Layer) -> torch.Tensor:
        """The loaded first-layer weights as the GEMM takes them (loihi-fixed: quantised)."""
        base = self._base["fc0.weight"].float()
        if not self.model.exact:
            return base if first.low_rank_base is None else first.low_rank_base
        if first.gemm_dtype != torch.float32:
            raise SpecError("low-rank probes need a first layer whose sums are exact in float32")
        return self.model.weights(base, first.spec, torch.float32, self._work, "l0.lowq")

    def _project(self, x: torch.Tensor, w: torch.Tensor, layer: _Layer, tag: str) -> torch.Tensor:
        """W.s of ``x`` for ``layer`` in its accumulator dtype (see ``_project``)."""
        if w.dtype == torch.int8:
            unit = self.model.int8_unit
            assert unit is not None
            return _project_int8(x, w, self._work, tag, layer.gemm_dtype, unit)
        return _project(x, w, self._work, tag, self.model.exact)

    def _chunk(
        self,
        layer: _Layer,
        shared: torch.Tensor | None,
        rows: int,
        g0: int,
        g1: int,
        batch: int,
    ) -> torch.Tensor:
        """A chunk's spike buffer, logical (rows, sets, B, n): laid out like the layer's
        shared synaptic input where it has one per set (the state follows it), else
        set-major like the GEMM's output, which the next layer's GEMM reads without a copy."""
        tag = f"l{layer.index}.chunk"
        n = layer.spec.n_out
        if shared is not None and shared.shape[1] > 1:
            return like(self._work.get, tag, shared[:rows, g0:g1], torch.float32)
        flat = self._work.get(tag, (g1 - g0, rows, batch, n), torch.float32)
        return flat.permute(1, 0, 2, 3)

    def _buffers(self, prefix: str):
        def buffer(tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return self._work.get(f"{prefix}.{tag}", shape, dtype)

        return buffer

    def _trace(
        self, layer: _Layer, steps: int, groups: int, batch: int, kind: int, record: bool
    ) -> torch.Tensor:
        """A (T, groups, B, n) trace stored set-major, fresh when it will be returned."""
        dtype = torch.float32 if kind == 0 else self.model.state_dtype
        shape = (groups, steps, batch, layer.spec.n_out)
        if record:
            flat = torch.empty(shape, dtype=dtype, device=self.device)
        else:
            flat = self._work.get(f"l{layer.index}.trace", shape, dtype)
        return flat.permute(1, 0, 2, 3)

    def _block_input(self, layer: _Layer, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Input spikes of groups [start, stop) of the first layer of a segment."""
        if x.shape[1] == 1:
            return x
        if layer.source is None:
            return x[:, start:stop]
        index = layer.source[start:stop]
        t, _, b, n = x.shape
        out = self._work.get(f"l{layer.index}.gather", (stop - start, t, b, n), x.dtype)
        torch.index_select(x.permute(1, 0, 2, 3), 0, index, out=out)
        return out.permute(1, 0, 2, 3)


def _project(
    x: torch.Tensor, w: torch.Tensor, work: _Workspace, tag: str, exact: bool = False
) -> torch.Tensor:
    """Synaptic input of every set at every step with one GEMM (or one batched GEMM).

    ``x``: logical (T, Sx, B, n_in) spikes (any memory layout); ``w``: (Sw, n_out, n_in) in
    the GEMM's dtype.  Returns logical (T, max(Sx, Sw), B, n_out) as a permuted view of the
    GEMM's output.  A shared input feeding a narrow layer (a readout) uses one GEMM against
    the stacked weights, (T, B, S, n) — measured 2.7x faster than a batched GEMM that
    re-reads the wide input per set; otherwise the result is set-major (S, T, B, n), so
    each step's slice is made of long contiguous runs and the next layer's per-set GEMM
    needs no copy.

    ``exact``: the products are integers whose sums are exact in any order (loihi-fixed),
    so a narrow layer may compute W.x^T instead of x.W^T: on CPU, MKL runs n_out = 10 at
    a third of its rate the other way round (measured 56 vs 30 GFLOP/s).  float32 keeps
    x.W^T, the order nn.Linear sums in.
    """
    t, sx, b, n_in = x.shape
    sw, n_out, _ = w.shape
    dtype = w.dtype
    if x.dtype != dtype:
        x = x.to(dtype)
    flip = exact and n_out < _NARROW and x.device.type == "cpu"

    def buffer(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return work.get(f"{tag}.{name}", shape, dtype)

    if sw == 1:
        order = physical_order(x[..., 0])  # the dims of (T, S, B) from outermost to innermost
        sizes = tuple(x.shape[d] for d in order)
        rows = x.permute(*order, 3).reshape(-1, n_in)
        if flip:
            out = torch.mm(w[0], rows.T, out=buffer("out", (n_out, rows.shape[0])))
            out = out.view(n_out, *sizes).permute(1, 2, 3, 0)
        else:
            out = torch.mm(rows, w[0].T, out=buffer("out", (rows.shape[0], n_out)))
            out = out.view(*sizes, n_out)
        return out.permute(*inverse(order), 3)
    if sx == 1 and n_in > n_out:  # shared input, narrow output: one stacked GEMM
        rows = x[:, 0].reshape(t * b, n_in)
        stacked = w.permute(2, 0, 1).reshape(n_in, sw * n_out)
        out = buffer("out", (t * b, sw * n_out))
        torch.mm(rows, stacked, out=out)
        return out.view(t, b, sw, n_out).permute(0, 2, 1, 3)
    if sx == 1:  # shared input, wide output: set-major batched GEMM on a broadcast input
        per_set = x[:, 0].reshape(1, t * b, n_in).expand(sw, -1, -1)
    elif sx == sw:
        per_set = x.permute(1, 0, 2, 3).reshape(sx, t * b, n_in)  # a view for set-major x
    else:
        raise SpecError(f"internal: {sx} input sets vs {sw} weight sets")
    if flip:
        out = torch.bmm(w, per_set.transpose(1, 2), out=buffer("out", (sw, n_out, t * b)))
        return out.view(sw, n_out, t, b).permute(2, 0, 3, 1)
    out = torch.bmm(per_set, w.transpose(1, 2), out=buffer("out", (sw, t * b, n_out)))
    return out.view(sw, t, b, n_out).permute(1, 0, 2, 3)


def _project_int8(
    x: torch.Tensor,
    w: torch.Tensor,
    work: _Workspace,
    tag: str,
    acc_dtype: torch.dtype,
    unit: float,
) -> torch.Tensor:
    """``_project`` for 0/1 spikes and int8 weights (multiples of ``unit``): int8 x int8 ->
    int32 GEMMs, exact in any order, then ``unit`` times the sums in ``acc_dtype`` (exact:
    integers below its mantissa's span, as the float GEMM's were), what the neuron update
    takes.  Same logical result and layout as ``_project``."""
    t, sx, b, n_in = x.shape
    sw, n_out, _ = w.shape

    def buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return work.get(f"{tag}.{name}", shape, dtype)

    def scaled(out32: torch.Tensor) -> torch.Tensor:
        acc = buffer("acc", tuple(out32.shape), acc_dtype)
        return acc.copy_(out32).mul_(unit)  # on CPU cheaper than one mixed-dtype mul

    if sw == 1:
        order = physical_order(x[..., 0])
        sizes = tuple(x.shape[d] for d in order)
        src = x.permute(*order, 3)
        rows = buffer("x8", (*sizes, n_in), torch.int8).copy_(src).view(-1, n_in)
        out = torch._int_mm(rows, w[0].T, out=buffer("out", (rows.shape[0], n_out), torch.int32))
        return scaled(out).view(*sizes, n_out).permute(*inverse(order), 3)
    if sx == 1:  # shared input: converted once
        rows = buffer("x8", (t, b, n_in), torch.int8).copy_(x[:, 0]).view(t * b, n_in)
        if n_in > n_out:  # narrow output: one GEMM against the stacked weights
            stacked = w.permute(2, 0, 1).reshape(n_in, sw * n_out)
            out = torch._int_mm(rows, stacked, out=buffer("out", (t * b, sw * n_out), torch.int32))
            return scaled(out).view(t, b, sw, n_out).permute(0, 2, 1, 3)
        per_set = [rows] * sw
    elif sx == sw:
        src = x.permute(1, 0, 2, 3)
        x8 = buffer("x8", (sx, t, b, n_in), torch.int8).copy_(src).view(sx, t * b, n_in)
        per_set = list(x8)
    else:
        raise SpecError(f"internal: {sx} input sets vs {sw} weight sets")
    out = buffer("out", (sw, t * b, n_out), torch.int32)
    for s, rows in enumerate(per_set):
        torch._int_mm(rows, w[s].T, out=out[s])
    return scaled(out).view(sw, t, b, n_out).permute(1, 0, 2, 3)


def _times_factors(x: torch.Tensor, vt: torch.Tensor, work: _Workspace, tag: str) -> torch.Tensor:
    """x Vt^T of every set, (S, T, B, r), in one GEMM against the stacked factors, once per
    segment: per block of sets the product had r columns a set and ran at a tenth of the
    GEMM's rate (0.13-0.16 s of a 0.6 s call on 784-128-10).  ``x``: logical
    (T, 1, B, n_in); ``vt``: (S, r, n_in)."""
    t, _, b, n_in = x.shape
    sets, rank, _ = vt.shape
    rows = x[:, 0].reshape(t * b, n_in)
    stacked = vt.permute(2, 0, 1).reshape(n_in, sets * rank)
    xv = torch.mm(rows, stacked, out=work.get(tag, (t * b, sets * rank), x.dtype))
    return xv.view(t, b, sets, rank).permute(2, 0, 1, 3)


def _project_low_rank(
    base: torch.Tensor, xv: torch.Tensor, ut: torch.Tensor, work: _Workspace, tag: str
) -> torch.Tensor:
    """x (W + U Vt)^T as x W^T + (x Vt^T) U^T for S sets on one shared input.

    ``base``: x W^T, logical (T, 1, B, n_out); ``xv``: x Vt^T, (S, T, B, r) (a view of
    :func:`_times_factors`'); ``ut``: U^T, (S, r, n_out).  Returns logical (T, S, B, n_out),
    set-major like ``_project``'s per-set GEMMs."""
    sets, t, b, rank = xv.shape
    n_out = ut.shape[2]
    out = work.get(f"{tag}.lr", (sets, t * b, n_out), xv.dtype)
    if rank <= MAX_FUSED_RANK:
        # One pass over the output per rank: MKL's batched GEMM with 2-4 inner columns ran
        # at a third of this rate (163 vs 56 us on a 640 x 512 block at rank 2); the fused
        # update sums up to the same rank itself, in the same order and rounding.
        view = out.view(sets, t, b, n_out)
        rows, cols = xv.unsqueeze(-1), ut[:, None, None]  # (S, T, B, r, 1), (S, 1, 1, r, n)
        torch.addcmul(base[:, 0].unsqueeze(0), rows[..., 0, :], cols[..., 0, :], out=view)
        for k in range(1, rank):
            view.addcmul_(rows[..., k, :], cols[..., k, :])
        return view.permute(1, 0, 2, 3)
    lhs = work.get(f"{tag}.xv", (sets, t * b, rank), xv.dtype)
    lhs.view(sets, t, b, rank).copy_(xv)
    torch.baddbmm(base[:, 0].reshape(1, t * b, n_out), lhs, ut, out=out)
    return out.view(sets, t, b, n_out).permute(1, 0, 2, 3)


def _batch_major(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 2, 0, 3)  # (T, V, B, N) -> (V, B, T, N)


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite.  A sum is NaN or infinite whenever a value
    is, and costs a fortieth of ``isfinite`` on a CPU (one read, no boolean copy: 4 ms
    against 174 ms for 40 M values); only a sum that overflows is checked value by value."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _is_identity(index: torch.Tensor, size: int) -> bool:
    if index.numel() != size:
        return False
    return bool((index == torch.arange(size, device=index.device)).all())


def _per_set(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per-group results (G, ...) -> per parameter set (V, ...)."""
    if x.shape[0] == 1:
        return x.expand(group.shape[0], *x.shape[1:])
    return x[group]
