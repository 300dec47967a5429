"""What a run adapts, and how strongly it holds on to the start, given the data it has.

One decision shared by ``polystep-neuro adapt`` and ``polystep_neuro.adapt``:

- **With clean data** (replay, or the built-in data's clean half) the run adapts everything
  the network marks writable and needs no anchor: the clean data keeps what the network did.
- **With drifted data only** nothing says how the network should treat clean inputs, so the
  run (unless told otherwise) adapts only the neuron biases of the hidden layers and is
  anchored to the start's own outputs (weight ``DRIFTED_ONLY_ANCHOR``).  A bias per hidden
  neuron can re-centre how strongly a weaker (or stronger) input drives the layer without
  re-mapping what the layer computes; adapting every weight from drifted data alone re-maps
  it and forgets.  Measured on an snnTorch 64-32-10 network with half the input gain and a
  fifth of the pixels dead (docs/benchmarks.md, section 4; medians of 3 seeds, anchor 2):
  every weight and bias gained 10.4 shifted points and lost 4.9 clean ones; the hidden
  biases alone gained 9.8 and lost 0.4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from polystep_neuro.core.network import NetworkSpec

DRIFTED_ONLY_ANCHOR = 2.0  # weight of the distillation term towards the start, no clean data


@dataclass(frozen=True)
class RunDefaults:
    writable: tuple[str, ...]
    anchor: float
    note: str | None = None  # one line for the user when the writable set was narrowed


def writable_names(
    spec: NetworkSpec, writable: str | Sequence[str] | None
) -> tuple[str, ...] | None:
    """A user's writable choice as names: "all" (or ["all"]) is every parameter of ``spec``,
    one string is one name (not its letters); None stays None (the defaults decide)."""
    if writable is None or len(writable) == 0:
        return None
    if isinstance(writable, str):
        writable = (writable,)
    if tuple(writable) == ("all",):
        return tuple(spec.param_shapes())
    return tuple(writable)


def hidden_biases(spec: NetworkSpec, names: Sequence[str]) -> tuple[str, ...]:
    """The neuron biases of every layer but the output layer, among ``names``."""
    hidden = {f"lif{i}.v_bias" for i in range(len(spec.layers) - 1)}
    return tuple(n for n in names if n in hidden)


def run_defaults(
    spec: NetworkSpec,
    *,
    has_clean: bool,
    writable: Sequence[str] | None = None,
    anchor: float | None = None,
) -> RunDefaults:
    """The writable set and anchor weight of a run (module doc); explicit values win.

    ``spec.writable`` is what the network marks writable (what the device can rewrite after
    ``polystep-neuro convert``); ``writable`` and ``anchor`` are the user's own choices.
    """
    if has_clean:
        return RunDefaults(tuple(writable or spec.writable), 0.0 if anchor is None else anchor)
    anchor = DRIFTED_ONLY_ANCHOR if anchor is None else anchor
    if writable:
        return RunDefaults(tuple(writable), anchor)
    narrowed = hidden_biases(spec, spec.writable)
    if not narrowed or narrowed == tuple(spec.writable):
        return RunDefaults(tuple(spec.writable), anchor)
    return RunDefaults(
        narrowed,
        anchor,
        f"drifted data only: adapting the hidden neurons' biases ({', '.join(narrowed)}), "
        "which track a drift without forgetting clean inputs (clean replay data lets a run "
        "adapt every writable parameter; naming the writable set overrides this)",
    )
