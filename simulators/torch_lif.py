"""Batched LIF simulator: V parameter sets x B samples x T steps in one pass (CPU or CUDA).

Two precisions:
- ``float32``: the float CUBA LIF of polystep_neuro.network with snnTorch's reset semantics
  (delay 0 reproduces ``nn.Linear`` + ``snn.Leaky``/``snn.Synaptic``; delay 1 is Lava's
  ``floating_pt`` model).
- ``loihi-fixed``: Loihi 2 integer arithmetic exactly as Lava's bit-accurate models compute
  it (../shared/docs/LOIHI_FIXED_POINT.md), so a GPU can stand in for the chip.

Speed: every Dense projection is one GEMM over all timesteps (the network is feed-forward, so
a layer's whole spike train is known before the next layer runs); only the neuron update
loops over time (simulators.lif_dynamics).  Layers before the first varied parameter are
computed once and shared by all V sets (simulators.param_groups).  On CPU the distinct sets
go through the network in blocks, layer after layer, sized so a block's synaptic input,
state and spikes stay in cache: a layer's whole (V, T, B, N) input and spike trains are
never written to memory when the next layer reads them block by block.  On CUDA one block
holds every set (fewer, larger kernels).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polystep_neuro.errors import SpecError
from polystep_neuro.network import LayerSpec, NetworkSpec, split_param_name
from simulators import fixed_point as fp
from simulators.lif_dynamics import (
    FixedNeurons,
    FloatNeurons,
    fixed_layer,
    fixed_neurons,
    float_layer,
    float_neurons,
    inverse,
    like,
    physical_order,
)
from simulators.param_groups import distinct_sets

PRECISIONS = ("float32", "loihi-fixed")
# Integer-valued float32 GEMMs are exact while every partial sum stays below 2**24.
_F32_EXACT = 1 << 24
# Neuron-state elements (sets x B x N of the widest layer) per block on CPU: 64 Ki float32
# (256 KiB) per step keeps state, input and spikes of a step in a core's L2 cache.
CPU_BLOCK_ELEMENTS = 1 << 16


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; asking for absent CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was asked for but CUDA is not available here; use 'cpu'")
    return dev


@contextlib.contextmanager
def _exact_fp32_matmul() -> Iterator[None]:
    """TF32 would round integer GEMMs on CUDA; switch it off for the fixed-point path."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


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
    weight: torch.Tensor  # (groups or 1, n_out, n_in) in the GEMM's dtype
    neurons: FloatNeurons | FixedNeurons
    groups: int
    in_groups: int
    source: torch.Tensor | None  # input group of each group; None: the same index, or shared
    set_group: torch.Tensor  # (V,) group of every parameter set after this layer

    @property
    def continues(self) -> bool:
        """Reads the previous layer's groups one to one, so it can share its block loop."""
        return self.source is None and self.groups == self.in_groups


class TorchLIF:
    """Evaluates a NetworkSpec for many parameter sets at once.

    ``run(params, inputs)`` takes ``params`` as ``{name: (V, *shape)}`` (only writable
    names; others keep the spec's values) and ``inputs`` as ``(B, T, N_in)``.
    ``block_elements`` bounds the neuron state a block of sets updates per step (default:
    ``CPU_BLOCK_ELEMENTS`` on CPU, every set at once on CUDA); results never depend on it.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        precision: str = "float32",
        device: str | torch.device | None = "cpu",
        block_elements: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        spec.validate()
        if precision == "loihi-fixed":
            fp.check_fixed_compatible(spec)
            spec = fp.calibrate(spec)
        self.spec = spec
        self.precision = precision
        self.device = resolve_device(device)
        if block_elements is None and self.device.type == "cpu":
            block_elements = CPU_BLOCK_ELEMENTS
        self.block_elements = block_elements
        self._work = _Workspace(self.device)
        self._base = {
            name: torch.as_tensor(np.asarray(value), device=self.device).unsqueeze(0)
            for name, value in spec.parameters().items()
        }

    # ------------------------------------------------------------------ public
    def run(
        self,
        params: Mapping[str, Any] | None,
        inputs: Any,
        *,
        record: bool = False,
    ) -> SimResult:
        params = dict(params or {})
        num_sets = self.spec.check_param_sets(params)
        self.spec.check_inputs(inputs)
        layers = self._plan(params, num_sets)
        x = self._prepare_inputs(inputs)
        traces: list[tuple[torch.Tensor, ...]] = []
        exact = (
            _exact_fp32_matmul() if self.precision == "loihi-fixed" else contextlib.nullcontext()
        )
        with exact:
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

    def counts(self, params: Mapping[str, Any] | None, inputs: Any) -> torch.Tensor:
        return self.run(params, inputs).counts

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
                for attr in layer_varied:
                    lp[attr] = lp[attr][rep]
                groups = rep.numel()
                if in_groups > 1 and not _is_identity(group[rep], in_groups):
                    source = group[rep]  # the input group each distinct set reads
                group = inv
            if self.precision == "loihi-fixed":
                exact_f32 = layer.n_in * max(abs(fp.WEIGHT_MIN), fp.WEIGHT_MAX) < _F32_EXACT
                gemm_dtype = torch.float32 if exact_f32 else torch.float64
                weight = quantized_weight(lp["weight"], layer, gemm_dtype, self._work, f"l{i}")
                neurons: FloatNeurons | FixedNeurons = fixed_neurons(lp, layer)
            else:
                weight, neurons = lp["weight"], float_neurons(lp)
            layers.append(_Layer(i, layer, weight, neurons, groups, in_groups, source, group))
            in_groups = groups
        return layers

    def _resolve(self, params: Mapping[str, Any]) -> dict[tuple[int, str], torch.Tensor]:
        """Every parameter keyed by (layer, attribute), passed sets over loaded values."""
        out = {split_param_name(name): value for name, value in self._base.items()}
        for name, value in params.items():
            t = torch.as_tensor(value, device=self.device)
            if not t.is_floating_point():
                t = t.to(torch.float32)
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise SpecError(f"parameter {name!r} contains {bad} non-finite value(s)")
            out[split_param_name(name)] = t.to(torch.float32)
        return out

    def _prepare_inputs(self, inputs: Any) -> torch.Tensor:
        x = torch.as_tensor(inputs, device=self.device)
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise SpecError("inputs contain non-finite values")
        if self.precision == "loihi-fixed" and not bool(((x == 0) | (x == 1)).all()):
            raise SpecError("loihi-fixed inputs must be binary spikes (0 or 1)")
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
        groups = layers[0].groups
        last = layers[-1]
        is_output = last.index == len(self.spec.layers) - 1
        widest = max(layer.spec.n_out for layer in layers)
        block = groups
        if self.block_elements is not None:
            block = max(1, min(groups, self.block_elements // (batch * widest)))
        # Full traces where something reads them after this segment; blocks elsewhere.
        full: dict[int, list[torch.Tensor]] = {}
        for layer in layers:
            if record or (layer is last and not is_output):
                kinds = 3 if record else 1
                full[layer.index] = [
                    self._trace(layer, steps, groups, batch, k, record) for k in range(kinds)
                ]
        counts = torch.empty(0, dtype=torch.int32, device=self.device)
        if is_output:
            counts = torch.empty(
                (groups, batch, last.spec.n_out), dtype=torch.int32, device=self.device
            )
        shared_a: dict[int, torch.Tensor] = {}
        for start in range(0, groups, block):
            stop = min(groups, start + block)
            inp = self._block_input(layers[0], x, start, stop)
            for layer in layers:
                a = self._synaptic_input(layer, inp, start, stop, shared_a)
                out = full.get(layer.index)
                if out is not None:
                    spikes = out[0][:, start:stop]
                else:
                    spikes = self._scratch_spikes(layer, a, stop - start)
                volts = out[1][:, start:stop] if record and out is not None else None
                currs = out[2][:, start:stop] if record and out is not None else None
                buffer = self._buffers(f"l{layer.index}")
                q = layer.neurons.take(start, stop)
                if isinstance(q, FloatNeurons):
                    float_layer(layer.spec, q, a, spikes, buffer, volts, currs)
                else:
                    fixed_layer(layer.spec, q, a, spikes, buffer, volts, currs)
                inp = spikes
            if is_output:
                torch.sum(inp, dim=0, dtype=torch.int32, out=counts[start:stop])
        for layer in layers:
            if record:
                traces.append(tuple(full[layer.index]))
        out_last = full.get(last.index)
        return (out_last[0] if out_last is not None else x), counts

    def _buffers(self, prefix: str):
        def buffer(tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
            return self._work.get(f"{prefix}.{tag}", shape, dtype)

        return buffer

    def _trace(
        self, layer: _Layer, steps: int, groups: int, batch: int, kind: int, record: bool
    ) -> torch.Tensor:
        """A (T, groups, B, n) trace stored set-major, fresh when it will be returned."""
        dtype = torch.float32 if kind == 0 or self.precision == "float32" else torch.int64
        shape = (groups, steps, batch, layer.spec.n_out)
        if record:
            flat = torch.empty(shape, dtype=dtype, device=self.device)
        else:
            flat = self._work.get(f"l{layer.index}.trace", shape, dtype)
        return flat.permute(1, 0, 2, 3)

    def _scratch_spikes(self, layer: _Layer, a: torch.Tensor, sets: int) -> torch.Tensor:
        """A block's spike buffer, laid out like its synaptic input when that is per set."""
        tag = f"l{layer.index}.spikes"
        if a.shape[1] == sets:
            return like(self._work.get, tag, a, torch.float32)
        shape = (sets, a.shape[0], a.shape[2], a.shape[3])
        return self._work.get(tag, shape, torch.float32).permute(1, 0, 2, 3)

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

    def _synaptic_input(
        self,
        layer: _Layer,
        inp: torch.Tensor,
        start: int,
        stop: int,
        shared: dict[int, torch.Tensor],
    ) -> torch.Tensor:
        """W.s of every step for groups [start, stop): logical (T, sets or 1, B, n_out).

        A shared input is projected for all groups at once when the weights are shared too
        or the layer narrows (one stacked GEMM, as cheap as one block's); the blocks then
        read their slice.  Everything else is one GEMM per block.
        """
        w = layer.weight
        n_out, n_in = w.shape[1], w.shape[2]
        if layer.in_groups == 1 and (w.shape[0] == 1 or n_in > n_out):
            if layer.index not in shared:
                shared[layer.index] = _project(inp, w, self._work, f"l{layer.index}")
            a = shared[layer.index]
            return a if a.shape[1] == 1 else a[:, start:stop]
        if w.shape[0] > 1:
            w = w[start:stop]
        return _project(inp, w, self._work, f"l{layer.index}")


def quantized_weight(
    w: torch.Tensor, layer: LayerSpec, dtype: torch.dtype, work: _Workspace, tag: str
) -> torch.Tensor:
    """``fp.quantize_weight(w, layer)`` in ``dtype``: the same float64 operations in the
    same order, done in place in reused buffers (fresh float64 copies of every set's
    weights cost more in page faults than the arithmetic)."""
    half = work.get(f"{tag}.q64", tuple(w.shape), torch.float64).copy_(w)
    half.mul_(fp.weight_factor(layer) / 2.0).round_()
    half.clamp_(fp.WEIGHT_MIN // 2, fp.WEIGHT_MAX // 2)
    if dtype == torch.float64:
        return half.mul_(2.0)
    return torch.mul(half, 2.0, out=work.get(f"{tag}.q", tuple(w.shape), dtype))


def _project(x: torch.Tensor, w: torch.Tensor, work: _Workspace, tag: str) -> torch.Tensor:
    """Synaptic input of every set at every step with one GEMM (or one batched GEMM).

    ``x``: logical (T, Sx, B, n_in) spikes (any memory layout); ``w``: (Sw, n_out, n_in) in
    the GEMM's dtype.  Returns logical (T, max(Sx, Sw), B, n_out) as a permuted view of the
    GEMM's output.  A shared input feeding a narrow layer (a readout) uses one GEMM against
    the stacked weights, (T, B, S, n) — measured 2.7x faster than a batched GEMM that
    re-reads the wide input per set; otherwise the result is set-major (S, T, B, n), so
    each step's slice is made of long contiguous runs and the next layer's per-set GEMM
    needs no copy.
    """
    t, sx, b, n_in = x.shape
    sw, n_out, _ = w.shape
    dtype = w.dtype

    def buffer(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return work.get(f"{tag}.{name}", shape, dtype)

    if sw == 1:
        order = physical_order(x[..., 0])  # the dims of (T, S, B) from outermost to innermost
        rows = x.permute(*order, 3).to(dtype).reshape(-1, n_in)
        out = buffer("out", (rows.shape[0], n_out))
        torch.mm(rows, w[0].T, out=out)
        return out.view(*(x.shape[d] for d in order), n_out).permute(*inverse(order), 3)
    if sx == 1 and n_in > n_out:  # shared input, narrow output: one stacked GEMM
        rows = x[:, 0].to(dtype).reshape(t * b, n_in)
        stacked = w.permute(2, 0, 1).reshape(n_in, sw * n_out)
        out = buffer("out", (t * b, sw * n_out))
        torch.mm(rows, stacked, out=out)
        return out.view(t, b, sw, n_out).permute(0, 2, 1, 3)
    if sx == 1:  # shared input, wide output: set-major batched GEMM on a broadcast input
        per_set = x[:, 0].to(dtype).reshape(1, t * b, n_in).expand(sw, -1, -1)
    elif sx == sw:
        per_set = x.permute(1, 0, 2, 3)
        if per_set.dtype != dtype or not per_set.is_contiguous():
            per_set = buffer("in", (sx, t, b, n_in)).copy_(per_set)
        per_set = per_set.reshape(sx, t * b, n_in)
    else:
        raise SpecError(f"internal: {sx} input sets vs {sw} weight sets")
    out = buffer("out", (sw, t * b, n_out))
    torch.bmm(per_set, w.transpose(1, 2), out=out)
    return out.view(sw, t, b, n_out).permute(1, 0, 2, 3)


def _batch_major(x: torch.Tensor) -> torch.Tensor:
    return x.permute(1, 2, 0, 3)  # (T, V, B, N) -> (V, B, T, N)


def _is_identity(index: torch.Tensor, size: int) -> bool:
    if index.numel() != size:
        return False
    return bool((index == torch.arange(size, device=index.device)).all())


def _per_set(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per-group results (G, ...) -> per parameter set (V, ...)."""
    if x.shape[0] == 1:
        return x.expand(group.shape[0], *x.shape[1:])
    return x[group]
