"""Which parameters a run may change: one decision for the API, `adapt`, `evaluate`,
`convert` and the demo.

The device has the last word, so the decision asks it (``Capabilities.can_write``): a
parameter the device cannot rewrite between evaluate calls cannot be searched on it.  A
fixed-point device (precision ``loihi-fixed``) also has no Dense bias of its own: it folds
``fc<i>.bias`` into the neuron bias, which is exact only while that layer's ``du`` stays 1,
so it cannot rewrite ``lif<i>.du`` of a layer with a Dense bias.

- ``"all"``: every parameter of the network that the device can rewrite.
- names: exactly those; one the device cannot rewrite is an error that says why and what to
  do instead.
- no choice: what the network marks writable, less what this device cannot rewrite (said in
  a note: a network a label-free run on torch-sim-fixed handed back marks its thresholds,
  which Lava cannot rewrite; an error when nothing is left); a network that marks nothing
  gets the weights and neuron biases, what Lava and Loihi 2 rewrite at run time.
- no choice and no labels (a label-free run): the hidden neurons' biases and, where the
  device can rewrite them, their thresholds; a threshold scales how readily a layer fires,
  which is what a confidence objective can tune without labels (docs/benchmarks.md, the
  label-free section, chose it on the tuned half of the corruption suite).
- no choice and drifted data only (no clean data): only the hidden neurons' biases among
  those.  Without clean data nothing says how the network should treat clean inputs; a bias
  per hidden neuron re-centres how strongly a weaker or stronger input drives the layer
  without re-mapping what the layer computes, while adapting every weight from drifted data
  alone re-maps it and forgets (docs/benchmarks.md, section 4, has the measurement).

numpy-free and torch-free (the core floor only), like ``run.interop``'s package module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from polystep_neuro.core.contract import Capabilities, parameter_kind
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec, split_param_name

ALL = "all"
FIXED_POINT = "loihi-fixed"
WritableChoice = str | Sequence[str] | None


@dataclass(frozen=True)
class Writable:
    """The decision: what the device loads as writable, and what this run adapts."""

    loaded: tuple[str, ...]  # marked writable on the device (the network handed back keeps it)
    adapted: tuple[str, ...]  # what the run searches: ``loaded``, or the hidden biases in it
    note: str | None = None  # for the user when the run adapts less than the network marks


def device_writable(spec: NetworkSpec) -> tuple[str, ...]:
    """What Lava and Loihi 2 rewrite at run time on every layer: the weights and the neuron
    biases (not thresholds: Lava's fixed_pt LIF caches vth after its first step)."""
    names: list[str] = []
    for i in range(len(spec.layers)):
        names += [f"fc{i}.weight", f"lif{i}.v_bias"]
    return tuple(names)


def hidden_biases(spec: NetworkSpec, names: Iterable[str]) -> tuple[str, ...]:
    """The neuron biases of every layer but the output layer, among ``names``."""
    hidden = {f"lif{i}.v_bias" for i in range(len(spec.layers) - 1)}
    return tuple(n for n in names if n in hidden)


def chosen_names(choice: WritableChoice) -> tuple[str, ...] | None:
    """A user's choice as names: one string is one name (not its letters), ``"all"`` stays
    ``("all",)``; None or an empty choice is None (the defaults decide)."""
    if choice is None or len(choice) == 0:
        return None
    return (choice,) if isinstance(choice, str) else tuple(choice)


def scoring_writable(spec: NetworkSpec, capabilities: Capabilities | None) -> Writable:
    """What a device loads to score ``spec`` only (``evaluate``): nothing is rewritten, so
    the names it marks writable that this device cannot rewrite (a label-free run's
    thresholds on Lava) are left out instead of refused; none need remain."""
    kept = _DeviceRules(spec, capabilities).rewritable(spec.writable)
    return Writable(kept, ())


def resolve_writable(
    spec: NetworkSpec,
    choice: WritableChoice,
    capabilities: Capabilities | None,
    has_clean: bool = True,
    label_free: bool = False,
) -> Writable:
    """The writable set of a run of ``spec`` on the device described by ``capabilities``
    (None: no device known yet, as in ``convert``; every parameter then counts as
    rewritable); see the module docstring for the rules."""
    device = _DeviceRules(spec, capabilities)
    names = chosen_names(choice)
    left: list[str] = []  # what the network marks writable and this device cannot rewrite
    if names == (ALL,):
        loaded = device.rewritable(spec.param_shapes())
    elif names is not None:
        loaded = device.check(spec.with_writable(names).writable, "the run asks to adapt {}")
    elif spec.writable:
        loaded = device.rewritable(spec.writable) or device.check(
            spec.writable, "the network marks {} writable"
        )
        left = [n for n in spec.writable if n not in loaded]
    else:
        loaded = device.rewritable(device_writable(spec))
    if not loaded:
        raise SpecError(
            f"nothing to adapt: {device.name} can rewrite none of this network's parameters "
            f"(it rewrites {device.kinds})"
        )
    if names is not None:
        return Writable(loaded, loaded)
    chosen = _resolve_loaded(spec, loaded, device, has_clean, label_free)
    if not left:
        return chosen
    said = f"note: the network marks {', '.join(left)} writable, but {device.why_not(left[0])}"
    said += ": left out"
    return replace(chosen, note=said if chosen.note is None else f"{said}\n{chosen.note}")


def _resolve_loaded(
    spec: NetworkSpec,
    loaded: tuple[str, ...],
    device: _DeviceRules,
    has_clean: bool,
    label_free: bool,
) -> Writable:
    """The defaults' choice among ``loaded`` (no names given): see the module docstring."""
    if has_clean:
        return Writable(loaded, loaded)
    if label_free:
        return _label_free(spec, loaded, device)
    narrowed = hidden_biases(spec, loaded)
    if not narrowed or narrowed == loaded:
        return Writable(loaded, loaded)
    return Writable(
        loaded,
        narrowed,
        f"drifted data only: adapting the hidden neurons' biases ({', '.join(narrowed)}), "
        "which track a drift without forgetting clean inputs (clean replay data lets a run "
        "adapt every writable parameter; naming the writable set overrides this)",
    )


def _label_free(spec: NetworkSpec, loaded: tuple[str, ...], device: _DeviceRules) -> Writable:
    """The hidden biases and thresholds the device can rewrite (loaded writable too, so the
    network handed back keeps them): the biases among ``loaded``, or where the network marks
    none writable, every hidden bias the device rewrites (thresholds alone barely move the
    objective: the demo's network -1.768 -> -1.771, under the rollback margin, against -1.869
    with its biases)."""
    hidden = range(len(spec.layers) - 1)
    thresholds = device.rewritable(f"lif{i}.vth" for i in hidden)
    biases = hidden_biases(spec, loaded)
    added = () if biases else device.rewritable(f"lif{i}.v_bias" for i in hidden)
    biases = biases or added
    adapted = biases + thresholds
    if not adapted:
        return Writable(loaded, loaded)
    if biases and thresholds:
        what = "biases and thresholds"
        why = "which re-centre and re-scale how each layer fires"
    elif biases:  # e.g. Lava caches thresholds when a network is built: biases alone
        what = f"biases ({device.name} cannot rewrite thresholds)"
        why = "which re-centre how each layer fires"
    else:  # no hidden bias the device can rewrite
        what = f"thresholds ({device.name} rewrites no hidden bias of this network)"
        why = "which re-scale how each layer fires"
    if added:
        what += " (the biases added: the network marks none writable)"
    return Writable(
        loaded + tuple(n for n in adapted if n not in loaded),
        adapted,
        f"without labels: adapting the hidden neurons' {what} ({', '.join(adapted)}), {why} "
        "without re-mapping what it computes (naming the writable set overrides this)",
    )


class _DeviceRules:
    """What one device can rewrite of one network, and why not where it cannot."""

    def __init__(self, spec: NetworkSpec, capabilities: Capabilities | None) -> None:
        self.spec = spec
        self.capabilities = capabilities
        # An empty ``writable`` is a device that does not say (an older server): its load
        # is then the judge.
        self.known = capabilities is not None and bool(capabilities.writable)
        self.name = capabilities.name if capabilities is not None else "the device"
        self.kinds = ", ".join(capabilities.writable) if self.known else "what it loads"

    def why_not(self, name: str) -> str | None:
        """Why the device cannot rewrite ``name`` (None: it can)."""
        if self.known and not self.capabilities.can_write(name):  # type: ignore[union-attr]
            return (
                f"{self.name} cannot rewrite {parameter_kind(name)} at run time (it rewrites "
                f"{self.kinds})"
            )
        index, attr = split_param_name(name)
        fixed = self.capabilities is not None and self.capabilities.precision == FIXED_POINT
        if fixed and attr == "du" and self.spec.layers[index].bias is not None:
            return (
                f"{self.name} cannot rewrite {name} of this network: layer {index} has a Dense "
                f"bias (fc{index}.bias), which Loihi 2 fixed point folds into the neuron bias, "
                "exact only while du stays 1"
            )
        return None

    def rewritable(self, names: Iterable[str]) -> tuple[str, ...]:
        return tuple(n for n in names if self.why_not(n) is None)

    def check(self, names: Sequence[str], source: str) -> tuple[str, ...]:
        """``names`` when the device can rewrite every one; else the first refusal, naming
        who asked for it (``source``, with ``{}`` for the name), the cause and the fix."""
        for name in names:
            why = self.why_not(name)
            if why is not None:
                raise SpecError(
                    f"{source.format(name)}, but {why}; leave it out of the writable set "
                    f"(--writable / writable=), or name '{ALL}' for every parameter "
                    f"{self.name} can rewrite"
                )
        return tuple(names)
