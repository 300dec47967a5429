"""What a Lava graph for a NetworkSpec looks like: checks, device values, layouts, cost model.

numpy-only on purpose: the host (Python >=3.11, no Lava) imports it to validate specs and to
tell whether a re-load can reuse a compiled graph, and the Lava env imports it to build one.
``simulators.lava_net`` turns a plan into Lava processes.

Lava computes one neuron model: Dense with one step of delay into a CUBA LIF that resets to
zero in the spiking step.  V parameter sets run as R replicas inside one graph:

- layers before the first varied layer are *shared* (computed once for all replicas);
- the first varied layer is *stacked*: its input is shared, so its weights are the R weight
  sets stacked row-wise, (R*out, in);
- later layers are *block-diagonal*: each replica feeds only itself, (R*out, R*in).

``b`` samples also run side by side (block-diagonal over samples), so one Lava step advances
b samples; neuron order in every LIF is (sample, replica, neuron).

Why these layouts (measured, lava-nc 0.10 on 2 CPU cores): a Lava step costs ~0.3 ms per
process (phase handshakes) plus ~1.1 ns (int32) / 0.5 ns (float64) per weight-matrix element,
zeros included.  Replicas cut the number of runs and stacked replicas cost no zeros; samples
side by side cut the steps by b but grow block-diagonal matrices as b^2 (and R^2 after the
first varied layer), so the cost model below picks R and b: for 64-128-10, T=25 it takes
R=V, b=4..8 when only the readout varies and b=1..2 when every layer does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from polystep_neuro.core.errors import CapacityError, SpecError
from polystep_neuro.core.network import NetworkSpec, split_param_name
from simulators import fixed_point as fp

LAVA_MODES = ("floating_pt", "fixed_pt")
# What a Lava graph can change between runs without recompiling (per replica).
RUNTIME_WRITABLE = {
    "fixed_pt": ("weight", "bias", "v_bias"),
    "floating_pt": ("weight", "bias", "v_bias", "vth"),
}
DEFAULT_MAX_VERTICES = 64
# Largest Lava weight matrix (elements) one graph may hold; block-diagonal layouts grow as
# (R*b)^2, so this bounds memory (a matrix lives in the Dense process, the bridge and the
# RefPort channel) and decides when V is split across runs.
DEFAULT_MAX_MATRIX_ELEMENTS = 1 << 23
# Input spikes sent to the bridge per run (int8 elements); more samples are split into runs.
INPUT_BUDGET = 1 << 21


# ----------------------------------------------------------------------------- checks
def writable_help(mode: str) -> str:
    names = ", ".join(_pattern(attr) for attr in RUNTIME_WRITABLE[mode])
    return f"writable on Lava {mode}: {names}"


def _pattern(attr: str) -> str:
    if attr == "bias":
        return "fc<i>.bias (folded into the LIF bias, needs du = 1)"
    if attr == "vth":
        return "lif<i>.vth (> 0; folded into that layer's weights and bias)"
    return f"fc<i>.{attr}" if attr == "weight" else f"lif<i>.{attr}"


def check_lava_spec(spec: NetworkSpec, mode: str) -> NetworkSpec:
    """The spec Lava will run (calibrated in fixed_pt), or a SpecError saying what to change."""
    if mode not in LAVA_MODES:
        raise SpecError(f"Lava mode must be one of {LAVA_MODES}, got {mode!r}")
    spec.validate()
    for i, layer in enumerate(spec.layers):
        if layer.delay != 1 or layer.reset != "zero" or layer.reset_delay:
            raise SpecError(
                f"layer {i}: Lava computes only Dense delay 1 with zero reset in the spiking "
                f"step (delay=1, reset='zero', reset_delay=False); this layer has "
                f"delay={layer.delay}, reset={layer.reset!r}, reset_delay={layer.reset_delay}; "
                f"{fp.CONVERT_REMEDY}"
            )
    fixed = set(RUNTIME_WRITABLE[mode])
    frozen = [name for name in spec.writable if split_param_name(name)[1] not in fixed]
    if frozen:
        raise SpecError(
            f"Lava {mode} cannot change {', '.join(frozen)} at runtime (decays and, in "
            f"fixed point, thresholds are fixed when the network is built); "
            f"{writable_help(mode)}"
        )
    for i, layer in enumerate(spec.layers):
        if layer.bias is None:
            continue
        no_memory = (
            fp.quantize_du(layer.du) == fp.DECAY_MAX if mode == "fixed_pt" else layer.du == 1.0
        )
        if not no_memory:
            raise SpecError(
                f"layer {i}: Lava has no Dense bias; fc{i}.bias can only be folded into the "
                f"LIF bias when du = 1 (no current memory), this layer has du={layer.du}; "
                f"{fp.CONVERT_REMEDY}"
            )
    if mode == "fixed_pt":
        fp.check_fixed_compatible(spec)
        spec = fp.calibrate(spec)
    return spec


BINARY_INPUTS = "Lava backends take binary input spikes (0 or 1)"


# ----------------------------------------------------------------------------- device values
@dataclass(frozen=True)
class DeviceLayer:
    """One layer as Lava's Dense + LIF take it (integers in fixed_pt, float64 otherwise)."""

    weight: np.ndarray  # (out, in)
    weight_exp: int
    du: float
    dv: float
    vth: float
    bias_mant: np.ndarray  # (out,)
    bias_exp: np.ndarray  # (out,)


@dataclass(frozen=True)
class Slot:
    """A Lava Var the bridge rewrites between runs: one per (layer, what) that varies."""

    layer: int
    what: str  # "weight" | "bias_mant" | "bias_exp"
    shape: tuple[int, ...]  # per replica


class DeviceNet:
    """A checked spec in device values, and the per-replica arrays of a batch of sets."""

    def __init__(self, spec: NetworkSpec, mode: str) -> None:
        self.spec = check_lava_spec(spec, mode)
        self.mode = mode
        self.fixed = mode == "fixed_pt"
        self.writable = tuple(self.spec.writable)
        varied = {split_param_name(name) for name in self.writable}
        self.varied_layers = sorted({index for index, _ in varied})
        self.first_varied = self.varied_layers[0] if self.varied_layers else None
        self.layers = [self._device_layer(i) for i in range(len(self.spec.layers))]
        self.slots: list[Slot] = []
        for i, layer in enumerate(self.spec.layers):
            attrs = {attr for index, attr in varied if index == i}
            if "weight" in attrs or "vth" in attrs:
                self.slots.append(Slot(i, "weight", (layer.n_out, layer.n_in)))
            bias_loaded = bool(np.any(self.layers[i].bias_mant != 0))
            if attrs & {"bias", "v_bias"} or ("vth" in attrs and bias_loaded):
                self.slots.append(Slot(i, "bias_mant", (layer.n_out,)))
                if self.fixed:
                    self.slots.append(Slot(i, "bias_exp", (layer.n_out,)))

    # ------------------------------------------------------------------ build-time values
    def _device_layer(self, i: int) -> DeviceLayer:
        layer = self.spec.layers[i]
        if self.fixed:
            q = fp.quantize_layer(layer)
            return DeviceLayer(q.weight, q.weight_exp, q.du, q.dv, q.vth, q.bias_mant, q.bias_exp)
        total = layer.v_bias if layer.bias is None else layer.v_bias + layer.bias
        return DeviceLayer(
            weight=layer.weight.astype(np.float64),
            weight_exp=0,
            du=float(layer.du),
            dv=float(layer.dv),
            vth=self.lava_vth(i),
            bias_mant=np.asarray(total, dtype=np.float64),
            bias_exp=np.zeros(layer.n_out, dtype=np.float64),
        )

    def lava_vth(self, i: int) -> float:
        """The threshold built into layer i's LIF (float mode folds other values into W)."""
        vth = float(self.spec.layers[i].vth)
        return vth if vth > 0 else 1.0

    def signature(self) -> tuple[Any, ...]:
        """Everything fixed when the graph is built: equal signatures share a graph."""
        parts: list[Any] = [self.mode, self.spec.num_steps, self.writable]
        for i, layer in enumerate(self.layers):
            parts.append((layer.weight.shape, layer.weight_exp, layer.du, layer.dv))
            parts.append(layer.vth)
            for what, value in (
                ("weight", layer.weight),
                ("bias_mant", layer.bias_mant),
                ("bias_exp", layer.bias_exp),
            ):
                if not any(s.layer == i and s.what == what for s in self.slots):
                    parts.append(np.ascontiguousarray(value).tobytes())
        return tuple(parts)

    # ------------------------------------------------------------------ runtime values
    def replica_arrays(self, params: Mapping[str, Any], num_sets: int) -> dict[Slot, np.ndarray]:
        """Per-slot device arrays (V, *shape) for V parameter sets (loaded values where a
        name is not given), quantised exactly as the torch simulator quantises them."""
        shapes = self.spec.param_shapes()
        base = self.spec.parameters()
        for name, value in params.items():
            arr = np.asarray(value, dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                raise SpecError(f"parameter {name!r} contains {bad} non-finite value(s)")

        def get(i: int, attr: str) -> np.ndarray:
            name = f"fc{i}.{attr}" if attr in ("weight", "bias") else f"lif{i}.{attr}"
            if name in params:
                return np.asarray(params[name], dtype=np.float32)
            return np.broadcast_to(base[name], (num_sets, *shapes[name]))

        out: dict[Slot, np.ndarray] = {}
        for slot in self.slots:
            i = slot.layer
            layer = self.spec.layers[i]
            scale = None
            if not self.fixed and f"lif{i}.vth" in self.writable:
                vth = get(i, "vth").astype(np.float64)
                if np.any(vth <= 0):
                    raise SpecError(
                        f"lif{i}.vth must be > 0 on Lava floating_pt (it is folded into the "
                        f"weights), got {float(vth.min())}"
                    )
                scale = self.lava_vth(i) / vth  # exactly 1.0 where vth is the built-in value
            if slot.what == "weight":
                w = get(i, "weight")
                if self.fixed:
                    out[slot] = fp.quantize_weight(w, layer).astype(np.int32)
                else:
                    w64 = w.astype(np.float64)
                    out[slot] = w64 if scale is None else w64 * scale[:, None, None]
                continue
            total = get(i, "v_bias")
            if layer.bias is not None:
                total = total + get(i, "bias")  # float32 sum, as the torch simulator does
            if self.fixed:
                mant, exp = fp.quantize_bias(total, layer)
                value = mant if slot.what == "bias_mant" else exp
                out[slot] = np.ascontiguousarray(value, dtype=np.int32)
            else:
                b64 = total.astype(np.float64)
                out[slot] = b64 if scale is None else b64 * scale[:, None]
        return out

    def loaded_arrays(self) -> dict[Slot, np.ndarray]:
        """The slots' values for the loaded parameters, one replica: (1, *shape)."""
        return self.replica_arrays({}, 1)


# ----------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """R replicas x b parallel samples; which layers are shared / stacked / block-diagonal."""

    replicas: int
    parallel: int
    first_varied: int | None

    def kind(self, i: int) -> str:
        if self.first_varied is None or i < self.first_varied:
            return "shared"
        return "stack" if i == self.first_varied else "bdiag"

    def copies(self, i: int) -> int:
        """Replicas a layer's neurons exist for (1 for shared layers)."""
        return 1 if self.kind(i) == "shared" else self.replicas

    def matrix_shape(self, i: int, n_out: int, n_in: int) -> tuple[int, int]:
        kind, r, b = self.kind(i), self.replicas, self.parallel
        if kind == "shared":
            return b * n_out, b * n_in
        if kind == "stack":
            return b * r * n_out, b * n_in
        return b * r * n_out, b * r * n_in


def block_diagonal(blocks: np.ndarray) -> np.ndarray:
    """(K, m, n) blocks -> (K*m, K*n) block-diagonal matrix."""
    k, m, n = blocks.shape
    out = np.zeros((k, m, k, n), dtype=blocks.dtype)
    idx = np.arange(k)
    out[idx, :, idx, :] = blocks
    return out.reshape(k * m, k * n)


def lava_weights(compact: np.ndarray, kind: str, replicas: int, parallel: int) -> np.ndarray:
    """Per-replica weights (R or 1, out, in) -> the Lava Dense matrix of a layout."""
    rc, n_out, n_in = compact.shape
    if kind == "shared":
        blocks = np.broadcast_to(compact[:1], (parallel, n_out, n_in))
    elif kind == "stack":
        full = np.broadcast_to(compact, (replicas, n_out, n_in)).reshape(replicas * n_out, n_in)
        blocks = np.broadcast_to(full, (parallel, *full.shape))
    else:
        full = np.broadcast_to(compact, (replicas, n_out, n_in))
        blocks = np.broadcast_to(full, (parallel, *full.shape)).reshape(-1, n_out, n_in)
    return block_diagonal(np.ascontiguousarray(blocks))


def lava_vector(compact: np.ndarray, copies: int, parallel: int) -> np.ndarray:
    """Per-replica neuron values (R or 1, n) -> (b * copies * n,) in (sample, replica) order."""
    n = compact.shape[-1]
    full = np.broadcast_to(compact.reshape(-1, n), (copies, n))
    return np.ascontiguousarray(np.broadcast_to(full, (parallel, copies, n))).reshape(-1)


# ----------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class CostModel:
    """Seconds for one evaluate on a layout: per Lava step a cost per process (Lava's phase
    handshakes) plus a cost per weight-matrix element (Lava's Dense touches the whole
    matrix every step, zeros of block-diagonal layouts included), plus per-run and
    per-sample (state reset) costs.  Fitted on a 2-core x86 box (lava-nc 0.10, Dense on its
    matrix-vector path); ``polystep_neuro/bench/lava_bench.py --sweep`` times the chosen layouts."""

    per_step: float = 2.0e-4
    per_process: float = 3.0e-4
    per_element: float = 1.1e-9  # int32 matrix-vector product (fixed_pt)
    per_neuron: float = 5.0e-8
    per_run: float = 2.0e-2
    per_window: float = 4.0e-3

    @classmethod
    def for_mode(cls, mode: str) -> CostModel:
        """float64 products (BLAS) cost about half of the int32 ones."""
        return cls(per_element=5.0e-10) if mode == "floating_pt" else cls()

    def step_seconds(self, spec: NetworkSpec, layout: Layout) -> float:
        elements = neurons = 0
        for i, layer in enumerate(spec.layers):
            rows, cols = layout.matrix_shape(i, layer.n_out, layer.n_in)
            elements += rows * cols
            neurons += rows
        processes = 1 + 2 * len(spec.layers)
        return (
            self.per_step
            + self.per_process * processes
            + self.per_element * elements
            + self.per_neuron * neurons
        )

    def evaluate_seconds(
        self, spec: NetworkSpec, layout: Layout, num_sets: int, num_samples: int
    ) -> float:
        runs_v = 1 if layout.first_varied is None else -(-num_sets // layout.replicas)
        windows = -(-num_samples // layout.parallel)
        runs_b = -(-windows // windows_per_run(spec, layout))
        steps = windows * spec.num_steps + runs_b
        per_v = (
            steps * self.step_seconds(spec, layout)
            + runs_b * self.per_run
            + windows * self.per_window
        )
        return runs_v * per_v


def matrix_elements(spec: NetworkSpec, layout: Layout) -> int:
    """Elements of the largest Lava weight matrix of a layout."""
    return max(
        math.prod(layout.matrix_shape(i, layer.n_out, layer.n_in))
        for i, layer in enumerate(spec.layers)
    )


def candidate_layouts(
    net: DeviceNet,
    num_sets: int,
    num_samples: int,
    max_vertices: int,
    max_matrix_elements: int,
    fits: Callable[[Layout], bool] | None = None,
) -> list[Layout]:
    """Every layout worth considering: R a power of two up to min(V, max_vertices) (or that
    bound itself), b a power of two up to B, within the matrix cap and, if given, ``fits``
    (the chip capacity check of loihi2 mode: a layout that does not fit is taken to stay
    unfit for larger b)."""
    if net.first_varied is None:
        replicas = [1]
    else:
        top = max(1, min(num_sets, max_vertices))
        replicas = sorted({top} | {2**k for k in range(top.bit_length()) if 2**k <= top})
    out = []
    for r in replicas:
        b = 1
        while True:
            layout = Layout(r, b, net.first_varied)
            if matrix_elements(net.spec, layout) > max_matrix_elements:
                break
            if fits is not None and not fits(layout):
                break
            out.append(layout)
            if b >= num_samples:
                break
            b *= 2
    if not out:
        raise CapacityError(
            f"one replica of this network needs a "
            f"{matrix_elements(net.spec, Layout(1, 1, net.first_varied))}-element weight "
            f"matrix, above the cap of {max_matrix_elements}"
        )
    return out


def choose_layout(
    net: DeviceNet,
    num_sets: int,
    num_samples: int,
    *,
    max_vertices: int = DEFAULT_MAX_VERTICES,
    replicas: int | None = None,
    parallel: int | None = None,
    max_matrix_elements: int = DEFAULT_MAX_MATRIX_ELEMENTS,
    cost: CostModel | None = None,
    fits: Callable[[Layout], bool] | None = None,
) -> Layout:
    """The layout the cost model finds fastest for V sets x B samples (``replicas`` /
    ``parallel`` pin R / b; ``fits`` drops layouts the device cannot hold)."""
    cost = cost or CostModel.for_mode(net.mode)
    layouts = candidate_layouts(
        net,
        num_sets,
        num_samples,
        max_vertices if replicas is None else replicas,
        max_matrix_elements,
        fits,
    )
    if replicas is not None and net.first_varied is not None:
        layouts = [lay for lay in layouts if lay.replicas == min(replicas, max(1, num_sets))]
    if parallel is not None:
        layouts = [lay for lay in layouts if lay.parallel == parallel]
    if not layouts:
        raise CapacityError(
            f"no layout with replicas={replicas}, parallel={parallel} fits the weight-matrix "
            f"cap of {max_matrix_elements} elements"
        )
    return min(
        layouts,
        key=lambda lay: (cost.evaluate_seconds(net.spec, lay, num_sets, num_samples), lay.parallel),
    )


def windows_per_run(spec: NetworkSpec, layout: Layout) -> int:
    """Sample windows (b samples each) one run carries, bounded by the input budget."""
    per_window = spec.num_steps * layout.parallel * spec.n_in
    return int(min(4096, max(1, INPUT_BUDGET // per_window)))
