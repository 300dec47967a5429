"""Converting networks between polystep-neuro's NetworkSpec and other tools.

- :mod:`polystep_neuro.run.interop.snntorch`: ``from_snntorch`` / ``to_snntorch`` (needs torch and
  snntorch; imported lazily, so ``import polystep_neuro.run.interop`` stays numpy-only).
- :mod:`polystep_neuro.run.interop.nir`: ``from_nir`` / ``to_nir`` / ``read_nir`` / ``write_nir``
  for NIR graphs (needs the ``nir`` package; import the submodule).
- :mod:`polystep_neuro.run.interop.netx`: ``write_netx``, the calibrated integer network as a
  lava-dl netx HDF5 file (needs h5py; import the submodule).
- :func:`device_compatibility` / :func:`to_device_semantics` (here, numpy-only, usable in the
  Lava env): what keeps a spec from running exactly on Lava / Loihi 2, and an explicit
  Lava-semantics copy together with the list of what that copy changed.

Importers never change a network's semantics behind the caller's back: a spec imported from
snnTorch computes what snnTorch computes (delay 0, snnTorch's reset mode), and moving it to
the device's semantics is a separate, reported step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.writable import device_writable  # the writable decision's default

__all__ = [
    "device_compatibility",
    "device_writable",
    "to_device_semantics",
    "from_snntorch",
    "to_snntorch",
    "run_snntorch",
    "record_snntorch",
    "SnnTorchRecord",
]

_SNNTORCH_NAMES = (
    "from_snntorch",
    "to_snntorch",
    "run_snntorch",
    "record_snntorch",
    "SnnTorchRecord",
)


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


def to_device_semantics(spec: NetworkSpec) -> tuple[NetworkSpec, list[str]]:
    """A copy of ``spec`` with the device's semantics, and the list of what was changed.

    Sets every layer to ``reset="zero"``, ``reset_delay=False``, ``delay=1``.  These change
    what the network computes (the caller decides whether that is acceptable, e.g. by
    re-adapting on the device).  A Dense bias with ``du != 1`` (or a writable ``du``) cannot
    be converted without changing the network's parameters, so it raises ``SpecError``.
    The returned copy satisfies ``device_compatibility(copy) == []``.
    """
    spec.validate()
    blockers = [p for i in range(len(spec.layers)) if (p := _bias_problem(spec, i)) is not None]
    if blockers:
        raise SpecError(
            "cannot convert to device semantics automatically: "
            + "; ".join(blockers)
            + " (a current bias with current memory has no device equivalent: set du=1 or "
            "drop the bias)"
        )
    layers = []
    changes: list[str] = []
    for i, layer in enumerate(spec.layers):
        if layer.reset != "zero":
            changes.append(f"layer {i}: reset {layer.reset!r} -> 'zero'")
        if layer.reset_delay:
            changes.append(f"layer {i}: reset_delay True -> False")
        if layer.delay != 1:
            changes.append(
                f"layer {i}: delay {layer.delay} -> 1 (its input arrives one step later)"
            )
        layers.append(replace(layer, reset="zero", reset_delay=False, delay=1))
    out = NetworkSpec(layers, spec.num_steps, spec.writable).validate()
    return out, changes


def __getattr__(name: str) -> Any:
    # The snnTorch converters need torch; import them only when asked for.
    if name in _SNNTORCH_NAMES:
        from polystep_neuro.run.interop import snntorch as _snntorch

        return getattr(_snntorch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
