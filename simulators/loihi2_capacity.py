"""Loihi 2 chip capacity: does a V-replica layout fit, and how many runs does V need.

numpy-only and Python 3.10 (the Lava env imports it; so does the host, to refuse a network
before anything is deployed).  ``simulators.lava_plan`` says what the Lava graph of V
replicas looks like; this module says whether that graph fits on the chip(s).

Model of the chip (explicit, simple and conservative; *unverified on a chip*):

- Every layer of a layout is one Lava Dense + LIF pair and gets cores of its own (layers do
  not share cores).  A layer has ``rows`` neurons and a weight matrix of ``rows x cols``, the
  shape ``Layout.matrix_shape`` gives (b samples side by side and R replicas included).
- A neuron lives on one core together with all its input synapses.  Synaptic memory holds
  the layer's weight matrix **densely**: one ``weight_bits``-bit mantissa (8 bits) per
  matrix element, zeros of the block-diagonal layouts included (the graph is a dense
  matrix; we do not assume the compiler drops its zero blocks).  The weight exponent is one
  per layer and costs nothing here.
- So a core holds ``min(max_neurons_per_core, synaptic_bits // (cols * weight_bits))``
  neurons of a layer, the layer needs ``ceil(rows / that)`` cores, and a layout fits when
  the layers' cores add up to at most ``cores_per_chip * chips``.
- Not modelled: neuron state memory beyond the per-core neuron cap, routing tables and
  axon counts, the embedded x86 cores (the host bridge's I/O runs there).

V parameter sets then run as ``ceil(V / R)`` runs of at most R replicas, R being the most
replicas that fit; a ``CapacityError`` is raised only when one replica does not fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polystep_neuro.core.errors import CapacityError, DeviceError, SpecError
from polystep_neuro.core.network import NetworkSpec, split_param_name
from simulators import fixed_point as fp
from simulators.lava_plan import Layout

CHIPS_ENV = "POLYSTEP_LOIHI2_CHIPS"


@dataclass(frozen=True)
class ChipLimits:
    """Per-core and per-chip limits of Loihi 2.

    Defaults are the public, datasheet-level figures (Intel's Loihi 2 brief: 128 neuro-cores
    per chip, up to 1M neurons per chip = 8192 per core), taken conservatively: a core has
    192 KB of memory shared flexibly between synapses, neuron state and routing, of which we
    count only 128 KB for synapses.  Change them for another system or a tighter mapping
    (``chips`` also from the environment, ``POLYSTEP_LOIHI2_CHIPS``)."""

    cores_per_chip: int = 128
    chips: int = 1
    max_neurons_per_core: int = 8192
    synaptic_memory_bytes: int = 128 * 1024  # per core
    weight_bits: int = 8  # stored bits per synapse (the 8-bit weight mantissa)

    def __post_init__(self) -> None:
        for name in (
            "cores_per_chip",
            "chips",
            "max_neurons_per_core",
            "synaptic_memory_bytes",
            "weight_bits",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise DeviceError(f"ChipLimits.{name} must be a positive integer, got {value!r}")

    @property
    def cores(self) -> int:
        return self.cores_per_chip * self.chips

    def synapses_per_core(self) -> int:
        """Synapses (weight-matrix elements) one core's synaptic memory holds."""
        return self.synaptic_memory_bytes * 8 // self.weight_bits

    def describe(self) -> str:
        chips = f"{self.chips} chip" + ("s" if self.chips != 1 else "")
        return (
            f"{chips} x {self.cores_per_chip} cores, {self.max_neurons_per_core} neurons and "
            f"{self.synaptic_memory_bytes} B of synaptic memory per core"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChipLimits:
        """The defaults, with the number of chips from ``POLYSTEP_LOIHI2_CHIPS`` if set."""
        raw = (os.environ if environ is None else environ).get(CHIPS_ENV, "").strip()
        if not raw:
            return cls()
        try:
            chips = int(raw)
        except ValueError:
            chips = 0
        if chips < 1:
            raise DeviceError(f"{CHIPS_ENV} must be a positive integer, got {raw!r}")
        return cls(chips=chips)


# ----------------------------------------------------------------------------- cores
@dataclass(frozen=True)
class LayerCores:
    """How one layer of a layout maps onto cores."""

    layer: int
    kind: str  # "shared" | "stack" | "bdiag" (see lava_plan.Layout)
    neurons: int  # rows of its Lava weight matrix
    fan_in: int  # columns: synapses stored per neuron
    neurons_per_core: int  # 0 when one neuron's synapses exceed a core's memory
    cores: int  # 0 when neurons_per_core is 0 (does not fit at all)


def first_varied(spec: NetworkSpec) -> int | None:
    """The first layer with a writable parameter (replicas start there), as DeviceNet has it."""
    layers = [split_param_name(name)[0] for name in spec.writable]
    return min(layers) if layers else None


def layout_cores(spec: NetworkSpec, layout: Layout, limits: ChipLimits) -> list[LayerCores]:
    out = []
    per_core = limits.synapses_per_core()
    for i, layer in enumerate(spec.layers):
        rows, cols = layout.matrix_shape(i, layer.n_out, layer.n_in)
        npc = min(limits.max_neurons_per_core, per_core // cols)
        cores = -(-rows // npc) if npc > 0 else 0
        out.append(LayerCores(i, layout.kind(i), rows, cols, npc, cores))
    return out


def cores_needed(spec: NetworkSpec, layout: Layout, limits: ChipLimits) -> int | None:
    """Cores a layout takes; None when some neuron's synapses exceed a core's memory."""
    layers = layout_cores(spec, layout, limits)
    if any(lc.neurons_per_core == 0 for lc in layers):
        return None
    return sum(lc.cores for lc in layers)


def fits(spec: NetworkSpec, layout: Layout, limits: ChipLimits) -> bool:
    need = cores_needed(spec, layout, limits)
    return need is not None and need <= limits.cores


def check_one_replica(spec: NetworkSpec, limits: ChipLimits) -> list[LayerCores]:
    """The cores of one replica (one sample at a time); CapacityError saying which layer or
    limit is exceeded, by how much, and what to do, when it does not fit."""
    layout = Layout(1, 1, first_varied(spec))
    layers = layout_cores(spec, layout, limits)
    where = f"Loihi 2 ({limits.describe()})"
    for lc in layers:
        if lc.neurons_per_core == 0:
            need = lc.fan_in * limits.weight_bits // 8
            most = limits.synapses_per_core()
            narrower = f"a narrower layer {lc.layer - 1}" if lc.layer else "fewer inputs"
            raise CapacityError(
                f"one replica does not fit on {where}: a neuron of layer {lc.layer} "
                f"(fc{lc.layer} -> lif{lc.layer}) has {lc.fan_in} input synapses, "
                f"{need} B at {limits.weight_bits}-bit weights, more than one core's "
                f"{limits.synaptic_memory_bytes} B of synaptic memory; give fc{lc.layer} at "
                f"most {most} inputs ({narrower}), or adapt on lava-fixed / "
                f"torch-sim-fixed, which have no chip limits"
            )
    total = sum(lc.cores for lc in layers)
    if total > limits.cores:
        detail = ", ".join(
            f"layer {lc.layer}: {lc.neurons} neurons x {lc.fan_in} synapses -> {lc.cores}"
            for lc in layers
        )
        chips = -(-total // limits.cores_per_chip)
        raise CapacityError(
            f"one replica does not fit on {where}: it needs {total} neuro-cores ({detail}), "
            f"{limits.cores} available; use a system with at least {chips} chips "
            f"({CHIPS_ENV}={chips}), or make the network smaller"
        )
    return layers


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class CapacityPlan:
    """How V parameter sets run on the chip: ``runs`` runs of ``run_sizes`` sets each."""

    num_sets: int
    replicas_per_run: int  # most replicas one run holds (1 copy serves all when none vary)
    run_sizes: tuple[int, ...]  # parameter sets per run, in order; sums to num_sets
    cores_per_run: int  # cores the layout of replicas_per_run replicas takes
    cores_available: int
    layers: tuple[LayerCores, ...]  # that layout, per layer

    @property
    def runs(self) -> int:
        return len(self.run_sizes)


def max_replicas(spec: NetworkSpec, limits: ChipLimits, upper: int) -> int:
    """The most replicas (1..upper) whose layout fits; needs one replica to fit."""
    first = first_varied(spec)
    if first is None:
        return 1
    lo, hi = 1, max(1, upper)  # cores grow with R: binary search for the last fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(spec, Layout(mid, 1, first), limits):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_runs(
    spec: NetworkSpec,
    num_sets: int,
    limits: ChipLimits,
    *,
    max_per_run: int | None = None,
) -> CapacityPlan:
    """Split V = ``num_sets`` parameter sets into runs whose replicas fit on the chip (one
    sample at a time; ``max_per_run`` caps replicas per run further, e.g. the graph cap).
    CapacityError when one replica does not fit."""
    if num_sets < 1:
        raise SpecError(f"need at least one parameter set, got {num_sets}")
    check_one_replica(spec, limits)
    first = first_varied(spec)
    if first is None:
        r, sizes = 1, (num_sets,)  # nothing varies: one copy serves every set
    else:
        upper = num_sets if max_per_run is None else min(num_sets, max_per_run)
        r = max_replicas(spec, limits, upper)
        sizes = tuple(min(r, num_sets - start) for start in range(0, num_sets, r))
    layers = layout_cores(spec, Layout(r, 1, first), limits)
    return CapacityPlan(
        num_sets=num_sets,
        replicas_per_run=r,
        run_sizes=sizes,
        cores_per_run=sum(lc.cores for lc in layers),
        cores_available=limits.cores,
        layers=tuple(layers),
    )


# ----------------------------------------------------------------------------- value ranges
# (low, high, must be even) of each device value, as Lava's fixed_pt models and Loihi 2 take
# them (see docs/fixed-point.md).  Weights written after the first step are
# not clipped by Lava, so values outside these ranges would reach the chip unchanged.
RANGES: dict[str, tuple[int, int, bool]] = {
    "weight": (fp.WEIGHT_MIN, fp.WEIGHT_MAX, True),  # 8-bit mixed-sign mantissa
    "weight_exp": (fp.WEIGHT_EXP_MIN, fp.WEIGHT_EXP_MAX, False),
    "bias_mant": (fp.BIAS_MANT_MIN, fp.BIAS_MANT_MAX, False),  # 13-bit signed
    "bias_exp": (0, fp.BIAS_EXP_MAX, False),  # 3-bit
    "vth": (0, fp.VTH_MAX, False),  # 17-bit unsigned
    "du": (0, fp.DECAY_MAX, False),  # 12-bit unsigned
    "dv": (0, fp.DECAY_MAX, False),
}


def check_values(layer: int, what: str, values: Any) -> None:
    """SpecError when a device value of layer ``layer`` is outside its Loihi 2 format."""
    low, high, even = RANGES[what]
    arr = np.asarray(values)
    if arr.size == 0:
        return
    bad = ~np.isfinite(arr) | (arr < low) | (arr > high) | (arr != np.round(arr))
    if even:
        bad |= np.mod(arr, 2) != 0
    if not np.any(bad):
        return
    first = arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
    fmt = f"{'even ' if even else ''}integers in [{low}, {high}]"
    hint = (
        "leave fixed_scale / fixed_weight_exp unset or recalibrate with "
        "simulators.fixed_point.calibrate(spec, force=True)"
        if what in ("weight_exp", "vth")
        else "quantise with simulators.fixed_point (it clips to the device formats)"
    )
    raise SpecError(
        f"layer {layer}: {int(np.count_nonzero(bad))} {what} value(s) outside Loihi 2's "
        f"format ({fmt}), e.g. {first}; {hint}"
    )


def check_device_layers(layers: Sequence[Any]) -> None:
    """Every layer's device integers (``fixed_point.FixedLayer`` or ``lava_plan.DeviceLayer``
    in fixed_pt) within the Loihi 2 formats."""
    for i, layer in enumerate(layers):
        for what in RANGES:
            check_values(i, what, getattr(layer, what))


def check_spec(spec: NetworkSpec, num_sets: int, limits: ChipLimits | None = None) -> CapacityPlan:
    """Everything the host can check before deploying ``spec`` (calibrated where needed)
    for ``num_sets`` parameter sets: device value ranges, then the capacity plan."""
    limits = limits or ChipLimits()
    check_device_layers(fp.quantize_spec(spec))
    return plan_runs(fp.calibrate(spec), num_sets, limits)


def summary(plan: CapacityPlan) -> str:
    per_run = "+".join(str(n) for n in plan.run_sizes)
    return (
        f"{plan.num_sets} parameter sets in {plan.runs} run(s) ({per_run}); "
        f"{plan.replicas_per_run} replicas take {plan.cores_per_run} of "
        f"{plan.cores_available} cores"
    )


__all__ = [
    "CHIPS_ENV",
    "RANGES",
    "CapacityPlan",
    "ChipLimits",
    "LayerCores",
    "check_device_layers",
    "check_one_replica",
    "check_spec",
    "check_values",
    "cores_needed",
    "first_varied",
    "fits",
    "layout_cores",
    "max_replicas",
    "plan_runs",
    "summary",
]
