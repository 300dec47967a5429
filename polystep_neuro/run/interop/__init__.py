"""Converting networks between polystep-neuro's NetworkSpec and other tools.

- :mod:`polystep_neuro.run.interop.snntorch`: ``from_snntorch`` / ``to_snntorch`` (needs torch and
  snntorch; imported lazily, so ``import polystep_neuro.run.interop`` stays numpy-only).
- :mod:`polystep_neuro.run.interop.nir`: ``from_nir`` / ``to_nir`` / ``read_nir`` / ``write_nir``
  for NIR graphs (needs the ``nir`` package; import the submodule).
- :mod:`polystep_neuro.run.interop.netx`: ``write_netx``, the calibrated integer network as a
  lava-dl netx HDF5 file (needs h5py; import the submodule).
- :func:`device_compatibility` / :func:`to_device_semantics` / :func:`for_backend` (here,
  numpy-only, usable in the Lava env): what keeps a spec from running exactly on Lava /
  Loihi 2, and the device's version of a spec together with the list of what that changed.

Importers never change a network's semantics behind the caller's back: a spec imported from
snnTorch computes what snnTorch computes (delay 0, snnTorch's reset mode), and moving it to
the device's semantics is a separate, reported step.  Every change says whether it is exact
(:class:`Change`); the approximate ones are what ``polystep-neuro check`` measures layer by
layer and ``polystep-neuro deploy`` adapts away on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from polystep_neuro.core.network import LayerSpec, NetworkSpec
from polystep_neuro.run.writable import device_writable  # the writable decision's default

# What the snnTorch submodule exports through here, imported on first use (__getattr__).
_SNNTORCH_NAMES = (
    "from_snntorch",
    "to_snntorch",
    "run_snntorch",
    "record_snntorch",
    "snntorch_spec",
    "SnnTorchRecord",
)
__all__ = [
    "DEVICE_TIMED",
    "Change",
    "device_compatibility",
    "device_layer",
    "device_timed",
    "device_writable",
    "for_backend",
    "to_device_semantics",
    *_SNNTORCH_NAMES,
]
# Backends that run the device's semantics (zero reset in the spiking step, one-step Dense
# delay, no Dense bias of their own): Lava and Loihi 2, and torch-sim-fixed, which stands in
# for them bit for bit.
DEVICE_TIMED = ("torch-sim-fixed", "lava", "lava-fixed", "loihi2")
MEASURE = "measure it with `polystep-neuro check`, recover it with `polystep-neuro deploy`"


class Change(str):
    """One change a conversion made, as the line it prints (``"layer 0: ..."``), with the
    layer it touched and whether the network still computes the same (``exact``)."""

    layer: int
    exact: bool

    def __new__(cls, layer: int, text: str, exact: bool) -> Change:
        suffix = "" if exact else " [approximate]"
        obj = super().__new__(cls, f"layer {layer}: {text}{suffix}")
        obj.layer = layer
        obj.exact = exact
        return obj


def _bias_problem(spec: NetworkSpec, i: int) -> str | None:
    layer = spec.layers[i]
    if layer.bias is None:
        return None
    if layer.du != 1.0:
        return (
            f"layer {i}: fc{i}.bias with du={layer.du:g}; the device adds a Dense bias to the "
            f"voltage (as the neuron bias), which equals a current bias only when du = 1"
        )
    if f"lif{i}.du" in spec.writable:
        return (
            f"layer {i}: fc{i}.bias with lif{i}.du writable; the device folds a Dense bias into "
            f"the neuron bias, which is exact only while du stays 1"
        )
    return None


def device_compatibility(spec: NetworkSpec) -> list[str]:
    """Everything that keeps ``spec`` from running exactly on Lava / Loihi 2 (empty: none).

    The device computes ``reset="zero"``, ``reset_delay=False`` and ``delay=1`` (Lava's
    Dense layer delivers its output one step later), and has no Dense bias of its own:
    a ``fc{i}.bias`` is folded into the neuron bias, exact only for ``du == 1``.
    """
    spec.validate()
    problems: list[str] = []
    for i, layer in enumerate(spec.layers):
        if layer.reset != "zero":
            problems.append(
                f"layer {i}: reset={layer.reset!r}; Loihi 2 neurons reset to zero (reset='zero')"
            )
        if layer.reset_delay:
            problems.append(
                f"layer {i}: reset_delay=True; Loihi 2 resets in the spiking step "
                f"(reset_delay=False)"
            )
        if layer.delay != 1:
            problems.append(
                f"layer {i}: delay={layer.delay}; every Lava Dense layer delivers its output "
                f"one step later (delay=1)"
            )
        bias = _bias_problem(spec, i)
        if bias is not None:
            problems.append(bias)
    return problems


def device_layer(i: int, layer: LayerSpec, num_steps: int) -> tuple[LayerSpec, list[Change]]:
    """One layer in the device's semantics, and what that changed."""
    changes: list[Change] = []
    if layer.reset != "zero":
        kept = "what was above the threshold" if layer.reset == "subtract" else "all of it"
        changes.append(
            Change(
                i,
                f"reset {layer.reset!r} -> 'zero' (the device zeroes the voltage after a spike, "
                f"where this layer kept {kept})",
                exact=False,
            )
        )
    if layer.reset_delay:
        changes.append(
            Change(i, "reset_delay True -> False (the device resets in the spiking step)", False)
        )
    if layer.delay != 1:
        changes.append(
            Change(
                i,
                f"delay {layer.delay} -> 1 (its input arrives one step later, so the layer "
                f"misses the last step's input)",
                exact=False,
            )
        )
    v_bias = np.asarray(layer.v_bias, dtype=np.float32)
    if layer.bias is not None:
        if np.float32(layer.du) == 1:
            v_bias = v_bias + layer.bias
            changes.append(
                Change(
                    i,
                    f"fc{i}.bias folded into lif{i}.v_bias (without current memory a current "
                    f"bias is a voltage bias; exact up to float32 rounding)",
                    exact=True,
                )
            )
        else:
            v_bias = v_bias + layer.bias * np.float32(mean_current_gain(layer.du, num_steps))
            changes.append(
                Change(
                    i,
                    f"fc{i}.bias with current memory (du={layer.du:g}) -> lif{i}.v_bias, the "
                    f"constant that delivers the same charge over the {num_steps} steps (Lava "
                    f"has no Dense bias; a current bias ramps up, this one does not)",
                    exact=False,
                )
            )
    out = replace(
        layer,
        reset="zero",
        reset_delay=False,
        delay=1,
        bias=None,
        v_bias=v_bias.astype(np.float32),
    )
    return out, changes


def mean_current_gain(du: float, num_steps: int) -> float:
    """The mean over ``num_steps`` steps of the current a unit bias builds in a synapse that
    keeps ``1 - du`` of it per step (``sum_{s<=t} (1 - du)**s``): the constant voltage bias
    that delivers the same charge."""
    keep = 1.0 - float(np.float32(du))
    steps = np.arange(num_steps, dtype=np.float64)
    if keep == 1.0:
        return float(np.mean(steps + 1.0))
    return float(np.mean((1.0 - keep ** (steps + 1.0)) / (1.0 - keep)))


def _device_names(names: Iterable[str]) -> tuple[str, ...]:
    """A writable set after the Dense biases were folded: ``fc{i}.bias`` -> ``lif{i}.v_bias``."""
    out: list[str] = []
    for name in names:
        if name.startswith("fc") and name.endswith(".bias"):
            name = "lif" + name[2:].replace(".bias", ".v_bias")
        if name not in out:
            out.append(name)
    return tuple(out)


def to_device_semantics(spec: NetworkSpec) -> tuple[NetworkSpec, list[Change]]:
    """A copy of ``spec`` with the device's semantics, and the list of what was changed.

    Sets every layer to ``reset="zero"``, ``reset_delay=False``, ``delay=1`` and folds every
    Dense bias into the neuron bias (Lava has no Dense bias): exactly where the layer has no
    current memory (``du = 1``), as the current it settles to (``bias / du``) where it has.
    Never refuses; each :class:`Change` says whether it is exact.  The approximate ones change
    what the network computes: ``polystep-neuro check`` measures their effect per layer,
    ``polystep-neuro deploy`` adapts the device network back towards the original.
    The returned copy satisfies ``device_compatibility(copy) == []``.
    """
    spec.validate()
    layers: list[LayerSpec] = []
    changes: list[Change] = []
    for i, layer in enumerate(spec.layers):
        out, changed = device_layer(i, layer, spec.num_steps)
        layers.append(out)
        changes += changed
    out_spec = NetworkSpec(layers, spec.num_steps, _device_names(spec.writable)).validate()
    return out_spec, changes


def device_timed(backend: str, capabilities: Any = None) -> bool:
    """Whether ``backend`` (a name, ``ray:NAME``, ``tcp://...``; with its ``Capabilities``
    once open) runs the device's semantics rather than snnTorch's: Lava, Loihi 2 and the
    fixed-point simulator do; ``torch-sim`` runs either exactly."""
    if capabilities is not None:
        if getattr(capabilities, "precision", "") == "loihi-fixed":
            return True
        names = str(getattr(capabilities, "name", "")).split("+")
        if any(name in DEVICE_TIMED for name in names):
            return True
    inner = backend.removeprefix("ray:")
    return any(part.strip() in DEVICE_TIMED for part in inner.split(","))


def for_backend(
    spec: NetworkSpec, backend: str, capabilities: Any = None
) -> tuple[NetworkSpec, list[Change]]:
    """``spec`` as ``backend`` runs it: :func:`to_device_semantics` for a device-timed backend
    (:func:`device_timed`), unchanged otherwise."""
    if device_timed(backend, capabilities):
        return to_device_semantics(spec)
    return spec.validate(), []


def __getattr__(name: str) -> Any:
    # The snnTorch converters need torch; import them only when asked for.
    if name in _SNNTORCH_NAMES:
        from polystep_neuro.run.interop import snntorch as _snntorch

        return getattr(_snntorch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
