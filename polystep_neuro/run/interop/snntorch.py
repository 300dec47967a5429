"""snnTorch models <-> NetworkSpec, without changing what the network computes.

``from_snntorch`` reads an ``nn.Sequential`` of ``nn.Linear`` layers each followed by an
``snn.Leaky`` or ``snn.Synaptic`` neuron (the usual ``init_hidden=True`` way of writing an
snnTorch model; ``init_hidden=False`` neurons and ``(linear, neuron)`` pairs work as well)
and returns a spec with ``delay=0`` and snnTorch's reset semantics, which
``simulators.torch_lif.TorchLIF`` in float32 reproduces spike for spike.

Mapping (per layer i)::

    nn.Linear.weight / .bias          -> fc{i}.weight / fc{i}.bias
    snn.Leaky(beta, threshold)        -> neuron="leaky",    du=1,         dv=1-beta
    snn.Synaptic(alpha, beta, thr.)   -> neuron="synaptic", du=1-alpha,   dv=1-beta
    threshold                         -> vth
    reset_mechanism, reset_delay      -> reset, reset_delay (carried exactly)

``beta`` and ``alpha`` are clamped to [0, 1] first, as snnTorch does in every step.

Numerics.  snnTorch computes in float32 and so does the simulator, which uses
``beta = 1 - dv`` with ``dv`` stored as float32.  For ``beta >= 0.5`` (the usual case)
``1 - beta`` is exact in float32, so the spec reproduces the model bit for bit.  For a
``beta`` (or ``alpha``) below 0.5 whose complement needs more than 24 significant bits, the
float32 ``dv`` is rounded and the simulator's factor differs from snnTorch's by at most
2**-25 (membranes then agree to about 1e-6, not bit for bit).
``to_snntorch`` stores ``beta`` and ``alpha`` as float64 buffers holding ``1 - dv`` exactly,
so that ``from_snntorch`` recovers ``du``/``dv`` bit for bit; snnTorch's float32 arithmetic
rounds them to the same float32 factors the simulator uses, so the outputs are identical
(``model.float()`` rounds the buffers: same outputs, but the round trip of ``dv`` is then
exact only for ``dv >= 0.5`` or when ``1 - dv`` is a float32).

Reset modes the device cannot run (anything but ``reset="zero", reset_delay=False``) are
kept as they are; :func:`device_compatibility` reports them and
:func:`to_device_semantics` makes an explicit, reported Lava-semantics copy.
``from_snntorch`` refuses per-neuron ``beta``/``alpha``/``threshold`` values (a spec holds one
per layer); :func:`snntorch_spec` maps them and says how (thresholds exactly, decays by
their mean), and :func:`load_into` copies a spec's weights and biases back into a module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    import snntorch as snn
except ImportError as exc:  # an optional dependency
    raise ImportError(
        "polystep_neuro.run.interop.snntorch needs snntorch: pip install 'polystep-neuro[snntorch]'"
    ) from exc

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec, refuse_output_copies
from polystep_neuro.run.interop import Change, device_compatibility, to_device_semantics

__all__ = [
    "SUPPORTED",
    "SnnTorchRecord",
    "device_compatibility",
    "from_snntorch",
    "load_into",
    "record_snntorch",
    "run_snntorch",
    "snntorch_spec",
    "to_device_semantics",
    "to_snntorch",
]

SUPPORTED = (
    "supported: an nn.Sequential (or an iterable of (nn.Linear, neuron) pairs) of nn.Linear "
    "layers each followed by snn.Leaky or snn.Synaptic, float32, with one beta/alpha/threshold "
    "value per layer (per-neuron values are mapped and reported by the commands and "
    "polystep_neuro.adapt/deploy/check; from_snntorch alone refuses them), "
    "reset_mechanism 'subtract'/'zero'/'none', reset_delay True or False, "
    "graded_spikes_factor 1, no inhibition, no state_quant, and a Heaviside spike_grad "
    "(every snntorch.surrogate function); nn.Dropout and nn.Flatten are left out"
)
# snnTorch's reset_mechanism_val -> (our reset name, the state function __init__ binds).
_RESETS = {0: ("subtract", "_base_sub"), 1: ("zero", "_base_zero"), 2: ("none", "_base_int")}
_NEURON_TYPES = (snn.Leaky, snn.Synaptic)
# Neurons whose spikes feed back through weights of their own: a NetworkSpec (and the
# devices' feed-forward layers here) has no place for that loop, so they are named as such.
_RECURRENT_TYPES = tuple(getattr(snn, n) for n in ("RLeaky", "RSynaptic") if hasattr(snn, n))
_Entry = tuple[str, nn.Module]


@dataclass
class SnnTorchRecord:
    """What an snnTorch model did on a batch (see :func:`record_snntorch`).

    counts: (B, N_out) int32 output spike counts.  spikes / membranes / currents: one
    (B, T, N) tensor per layer; membranes after the step's reset (``neuron.mem``), currents
    the synaptic current (``Synaptic.syn``) or, for ``Leaky``, the Linear output.
    """

    counts: torch.Tensor
    spikes: list[torch.Tensor]
    membranes: list[torch.Tensor]
    currents: list[torch.Tensor]


# --------------------------------------------------------------------------- reading models
def _describe(name: str, module: nn.Module) -> str:
    return f"layer {name} ({type(module).__name__})"


def _unsupported(name: str, module: nn.Module, problem: str) -> SpecError:
    return SpecError(f"{_describe(name, module)}: {problem}; {SUPPORTED}")


def _expand(name: str, module: nn.Module) -> Iterator[_Entry]:
    """Nested nn.Sequential / nn.ModuleList are read in order (they only chain layers)."""
    if isinstance(module, (nn.Sequential, nn.ModuleList)):
        for child_name, child in module.named_children():
            yield from _expand(f"{name}.{child_name}" if name else child_name, child)
    else:
        yield name, module


def _flatten(model: Any) -> list[_Entry]:
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        return list(_expand("", model))
    if isinstance(model, nn.Module):
        raise SpecError(
            f"cannot read a {type(model).__name__}: its forward() may wire the layers in any "
            f"order; pass an nn.Sequential or an iterable of (nn.Linear, neuron) pairs, e.g. "
            f"[(net.fc1, net.lif1), (net.fc2, net.lif2)]"
        )
    try:
        items = list(model)
    except TypeError:
        raise SpecError(
            f"expected an nn.Sequential or an iterable of (nn.Linear, neuron) pairs, "
            f"got {type(model).__name__}"
        ) from None
    entries: list[_Entry] = []
    for k, item in enumerate(items):
        if isinstance(item, nn.Module):
            entries.extend(_expand(str(k), item))
        elif isinstance(item, (tuple, list)) and all(isinstance(m, nn.Module) for m in item):
            for j, module in enumerate(item):
                entries.extend(_expand(f"{k}[{j}]", module))
        else:
            raise SpecError(
                f"item {k} is a {type(item).__name__}, not an nn.Module or a (nn.Linear, "
                f"neuron) pair"
            )
    return entries


def _left_out(model: Any) -> list[tuple[int, str]]:
    """(the layer it sits in, what the conversion says of it) for each nn.Dropout and
    nn.Flatten: the identity on what the device computes, so left out."""
    out, layer = [], 0
    for name, module in _flatten(model):
        if isinstance(module, nn.Dropout):
            why = f"nn.Dropout {name!r} left out: it passes its input unchanged once trained"
        elif isinstance(module, nn.Flatten):
            why = (f"nn.Flatten {name!r} left out: the device takes every time step's inputs "
                   "as one flat vector already (give spikes (n, T, N_in))")  # fmt: skip
        else:
            if type(module) in _NEURON_TYPES:
                layer += 1
            continue
        out.append((max(layer - 1, 0), why))
    return out


def _layer_pairs(model: Any) -> list[tuple[_Entry, _Entry]]:
    """The model as [((name, Linear), (name, neuron)), ...], or a SpecError naming the layer."""
    entries = _flatten(model)
    if not entries:
        raise SpecError(f"the model has no layers; {SUPPORTED}")
    pairs: list[tuple[_Entry, _Entry]] = []
    pending: _Entry | None = None  # a Linear still waiting for its neuron
    previous: _Entry | None = None
    for name, module in entries:
        if type(module) is nn.Linear:
            if pending is not None:
                raise _unsupported(
                    name,
                    module,
                    f"two nn.Linear in a row (after layer {pending[0]}) with no spiking neuron "
                    f"between them",
                )
            pending = (name, module)
        elif type(module) in _NEURON_TYPES:
            if pending is None:
                where = "at the start" if previous is None else f"after {_describe(*previous)}"
                raise _unsupported(
                    name, module, f"a spiking neuron with no nn.Linear before it ({where})"
                )
            pairs.append((pending, (name, module)))
            pending = None
        elif isinstance(module, _NEURON_TYPES):
            raise _unsupported(
                name, module, "a subclass of snn.Leaky/snn.Synaptic (its update may differ)"
            )
        elif isinstance(module, nn.Dropout):
            continue  # the identity once trained: left out, and said (_left_out)
        elif isinstance(module, nn.Flatten):
            if module.start_dim != 1:
                raise _unsupported(name, module, "an nn.Flatten that folds the batch too "
                                   f"(start_dim={module.start_dim}, not 1)")  # fmt: skip
            continue  # the identity on flat (batch, features) inputs: left out, and said
        elif isinstance(module, _RECURRENT_TYPES):
            raise _unsupported(name, module, "a recurrent neuron (its spikes feed back through "
                               "its own weights), which this project's feed-forward networks "
                               "cannot hold: no conversion keeps the loop")  # fmt: skip
        else:
            raise _unsupported(name, module, "this layer type is not supported")
        previous = (name, module)
    if pending is not None:
        raise _unsupported(*pending, "an nn.Linear that is not followed by a spiking neuron")
    return pairs


def _values(name: str, neuron: nn.Module, attr: str, n_out: int, clamp: bool) -> torch.Tensor:
    """The ``beta``/``alpha``/``threshold`` values of a layer, flat (1 or ``n_out`` values)."""
    t = torch.as_tensor(getattr(neuron, attr)).detach()
    if clamp:  # what snnTorch does in every step
        t = t.clamp(0, 1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise _unsupported(name, neuron, f"{attr} must be finite, got {t.tolist()}")
    if t.numel() not in (1, n_out):
        raise _unsupported(name, neuron, f"{attr} has {t.numel()} values for {n_out} neurons")
    return t.flatten()


def _layer_value(name: str, neuron: nn.Module, attr: str, n_out: int, clamp: bool) -> float:
    """The one value of ``beta``/``alpha``/``threshold`` a layer uses (exact, in its dtype)."""
    flat = _values(name, neuron, attr, n_out, clamp)
    if not bool((flat == flat[0]).all()):
        raise _unsupported(
            name,
            neuron,
            f"per-neuron {attr} (values from {float(flat.min()):g} to {float(flat.max()):g}); "
            f"a NetworkSpec has one {attr} per layer (polystep-neuro convert, "
            f"interop.snntorch_spec and pn.adapt map it, and say how)",
        )
    return float(flat[0])


def _is_heaviside(spike_grad: Any) -> bool:
    probe = torch.tensor([-1.0, -1e-30, 0.0, 1e-30, 1.0])
    try:
        with torch.no_grad():
            out = torch.as_tensor(spike_grad(probe))
    except Exception:  # any failure means we cannot vouch for it
        return False
    return out.shape == probe.shape and bool(
        torch.equal(out.float().cpu(), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))
    )


def _check_neuron(name: str, neuron: nn.Module) -> str:
    """The neuron's reset mode, after refusing what no NetworkSpec can compute."""
    if getattr(neuron, "inhibition", False):
        raise _unsupported(name, neuron, "inhibition=True (only the largest membrane may spike)")
    if getattr(neuron, "state_quant", False):
        raise _unsupported(name, neuron, "state_quant (quantised hidden state)")
    graded = torch.as_tensor(neuron.graded_spikes_factor).detach()
    if not bool((graded == 1).all()):
        raise _unsupported(
            name, neuron, f"graded_spikes_factor={graded.flatten().tolist()} (graded spikes)"
        )
    if not _is_heaviside(neuron.spike_grad):
        raise _unsupported(
            name, neuron, "a spike_grad whose forward pass is not the step (mem > threshold)"
        )
    code = int(neuron.reset_mechanism_val)
    if code not in _RESETS:
        raise _unsupported(name, neuron, f"reset_mechanism_val={code}")
    reset, state_fn = _RESETS[code]
    if getattr(neuron.state_function, "__func__", None) is not getattr(type(neuron), state_fn):
        raise _unsupported(
            name,
            neuron,
            f"reset_mechanism was changed to {reset!r} after construction; snnTorch keeps the "
            f"state function chosen in __init__, so this neuron mixes two reset modes (build "
            f"it with the reset_mechanism you want)",
        )
    return reset


def _neuron_params(name: str, neuron: nn.Module, n_out: int) -> dict[str, Any]:
    reset = _check_neuron(name, neuron)
    beta = _layer_value(name, neuron, "beta", n_out, clamp=True)
    vth = _layer_value(name, neuron, "threshold", n_out, clamp=False)
    if vth < 0:
        raise _unsupported(name, neuron, f"threshold={vth:g} < 0 (a NetworkSpec needs vth >= 0)")
    return _spec_fields(
        neuron, reset, vth, beta, lambda: _layer_value(name, neuron, "alpha", n_out, clamp=True)
    )


def _spec_fields(
    neuron: nn.Module, reset: str, vth: float, beta: float, alpha: Callable[[], float]
) -> dict[str, Any]:
    """The LayerSpec fields of a Leaky or Synaptic neuron from its read values, one mapping
    for the exact reader and the lenient one (``alpha`` is read for a Synaptic only)."""
    params: dict[str, Any] = {
        "dv": 1.0 - beta,
        "vth": vth,
        "reset": reset,
        "reset_delay": bool(neuron.reset_delay),
    }
    if type(neuron) is snn.Leaky:
        params.update(neuron="leaky", du=1.0)
    else:
        params.update(neuron="synaptic", du=1.0 - alpha())
    return params


def _linear_arrays(
    fc_name: str, fc: nn.Module, prev_out: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    assert isinstance(fc, nn.Linear)
    if fc.weight.dtype != torch.float32 or (fc.bias is not None and fc.bias.dtype != torch.float32):
        raise _unsupported(
            fc_name, fc, f"{fc.weight.dtype} parameters (NetworkSpec is float32: model.float())"
        )
    if prev_out is not None and fc.in_features != prev_out:
        raise _unsupported(
            fc_name,
            fc,
            f"in_features={fc.in_features} but the previous layer has {prev_out} neurons",
        )
    weight = fc.weight.detach().cpu().numpy().copy()
    bias = None if fc.bias is None else fc.bias.detach().cpu().numpy().copy()
    return weight, bias


def from_snntorch(
    model: Any,
    num_steps: int,
    *,
    delay: int = 0,
    writable: Iterable[str] | str = (),
) -> NetworkSpec:
    """The NetworkSpec of an snnTorch model (see the module docstring for the mapping).

    ``model``: an ``nn.Sequential`` (nested ones are read in order) or an iterable of
    ``(nn.Linear, snn.Leaky | snn.Synaptic)`` pairs.  ``delay=0`` (the default) is snnTorch's
    timing; ``delay=1`` builds Lava's timing instead (each layer one step later), which is
    not what the snnTorch model computes.  ``writable``: the parameter names the device may
    change ("all" for every one).  Anything that cannot be represented exactly raises
    ``SpecError`` naming the layer (its position in the model and its type); per-neuron
    ``beta``/``alpha``/``threshold`` values are mapped by :func:`snntorch_spec` instead.
    """
    if delay not in (0, 1):
        raise SpecError(f"delay must be 0 (snnTorch) or 1 (Lava/Loihi), got {delay!r}")
    layers: list[LayerSpec] = []
    prev_out: int | None = None
    for (fc_name, fc), (lif_name, lif) in _layer_pairs(model):
        weight, bias = _linear_arrays(fc_name, fc, prev_out)
        layers.append(
            LayerSpec(
                weight=weight,
                bias=bias,
                delay=delay,
                **_neuron_params(lif_name, lif, fc.out_features),
            )
        )
        prev_out = fc.out_features
    return NetworkSpec(layers, num_steps).validate().with_writable(writable)


def _lenient_layer(
    i: int, fc_entry: _Entry, lif_entry: _Entry, prev_out: int | None
) -> tuple[LayerSpec, list[Change]]:
    """One layer, mapping per-neuron values: thresholds exactly (each neuron's weights and
    bias divided by its threshold, which then is 1), decays by their mean (approximate)."""
    (fc_name, fc), (lif_name, lif) = fc_entry, lif_entry
    weight, bias = _linear_arrays(fc_name, fc, prev_out)
    n_out = weight.shape[0]
    reset = _check_neuron(lif_name, lif)
    notes: list[Change] = []
    thresholds = _values(lif_name, lif, "threshold", n_out, clamp=False).double().numpy()
    vth = float(thresholds[0])
    if np.any(thresholds != thresholds[0]):
        if np.any(thresholds <= 0):
            raise _unsupported(
                lif_name, lif, "per-neuron thresholds that are not all > 0 (cannot normalise)"
            )
        per = np.broadcast_to(thresholds, (n_out,))
        weight = (weight / per[:, None]).astype(np.float32)
        bias = None if bias is None else (bias / per).astype(np.float32)
        vth = 1.0
        notes.append(
            Change(
                i,
                f"per-neuron thresholds ({per.min():g} to {per.max():g}) -> threshold 1, each "
                f"neuron's weights and bias divided by its threshold (exact up to float32 "
                f"rounding)",
                exact=True,
            )
        )
    elif vth < 0:
        raise _unsupported(lif_name, lif, f"threshold={vth:g} < 0 (a NetworkSpec needs vth >= 0)")

    def decay(attr: str) -> float:
        flat = _values(lif_name, lif, attr, n_out, clamp=True).double().numpy()
        if np.all(flat == flat[0]):
            return float(flat[0])
        mean = float(flat.mean())
        notes.append(
            Change(
                i,
                f"per-neuron {attr} ({flat.min():g} to {flat.max():g}) -> their mean {mean:g} "
                f"(a NetworkSpec, like a Lava LIF process, has one {attr} per layer)",
                exact=False,
            )
        )
        return mean

    params = _spec_fields(lif, reset, vth, decay("beta"), lambda: decay("alpha"))
    return LayerSpec(weight=weight, bias=bias, delay=0, **params), notes


def snntorch_spec(model: Any, num_steps: int) -> tuple[NetworkSpec, list[Change]]:
    """The NetworkSpec of any model :func:`from_snntorch` reads, per-neuron values included,
    and what had to be mapped (empty when the spec is exactly :func:`from_snntorch`'s).

    Per-neuron thresholds become 1 with each neuron's weights and bias divided by its own
    threshold (the same spikes, exact up to float32 rounding); per-neuron ``beta``/``alpha``
    become the layer's mean (approximate: ``polystep-neuro check`` measures it).  snnTorch's
    timing and resets are kept; :func:`~polystep_neuro.run.interop.for_backend` moves them
    to a device's.
    """
    layers: list[LayerSpec] = []
    notes: list[Change] = [Change(i, why, True) for i, why in _left_out(model)]
    prev_out: int | None = None
    for i, (fc_entry, lif_entry) in enumerate(_layer_pairs(model)):
        layer, changed = _lenient_layer(i, fc_entry, lif_entry, prev_out)
        layers.append(layer)
        notes += changed
        prev_out = layer.n_out
    return NetworkSpec(layers, num_steps).validate(), notes


# --------------------------------------------------------------------------- writing models
def _factor(decay: float) -> torch.Tensor:
    """``1 - decay`` of the float32 decay, held exactly (float64; see the module docstring)."""
    return torch.tensor(1.0 - float(np.float32(decay)), dtype=torch.float64)


def to_snntorch(spec: NetworkSpec) -> nn.Sequential:
    """An ``nn.Sequential`` of ``nn.Linear`` + ``snn.Leaky``/``snn.Synaptic`` computing ``spec``.

    Neurons have ``init_hidden=True``; the last has ``output=True`` (so the model returns
    ``(spk, mem)`` for Leaky, ``(spk, syn, mem)`` for Synaptic, snnTorch's convention).
    ``SpecError`` where snnTorch cannot express the spec: ``delay=1`` (snnTorch has no
    synaptic delay), or a non-zero ``v_bias`` on a layer with current memory (``du < 1``).
    With ``du = 1`` the input current is this step's Linear output alone, so adding
    ``v_bias`` to the voltage equals adding it to the Linear bias (exact in real arithmetic;
    float32 rounding of the two sums can differ in the last bit).  The fixed-point
    calibration and ``writable`` are not part of an snnTorch model and are dropped.
    """
    spec.validate()
    refuse_output_copies(spec, "an snnTorch model")
    modules: list[nn.Module] = []
    last = len(spec.layers) - 1
    for i, layer in enumerate(spec.layers):
        if layer.delay != 0:
            raise SpecError(
                f"layer {i}: delay={layer.delay} (Lava's one-step Dense delay) has no snnTorch "
                f"equivalent; snnTorch layers act within the step (delay=0)"
            )
        bias = layer.bias
        assert layer.v_bias is not None
        if np.any(layer.v_bias != 0):
            if np.float32(layer.du) != 1:
                raise SpecError(
                    f"layer {i}: lif{i}.v_bias is non-zero and du={layer.du:g}; snnTorch has no "
                    f"voltage bias, and a Linear bias equals one only when du = 1"
                )
            bias = layer.v_bias if bias is None else bias + layer.v_bias
        fc = nn.utils.skip_init(nn.Linear, layer.n_in, layer.n_out, bias=bias is not None)
        with torch.no_grad():
            fc.weight.copy_(torch.from_numpy(np.asarray(layer.weight, dtype=np.float32)))
            if bias is not None:
                fc.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
        common: dict[str, Any] = {
            "threshold": torch.tensor(float(np.float32(layer.vth)), dtype=torch.float32),
            "reset_mechanism": layer.reset,
            "reset_delay": bool(layer.reset_delay),
            "init_hidden": True,
            "output": i == last,
        }
        if layer.neuron == "leaky":
            neuron: nn.Module = snn.Leaky(beta=_factor(layer.dv), **common)
        else:
            neuron = snn.Synaptic(alpha=_factor(layer.du), beta=_factor(layer.dv), **common)
        modules += [fc, neuron]
    return nn.Sequential(*modules)


def load_into(spec: NetworkSpec, model: Any) -> None:
    """Copy ``spec``'s weights and biases into ``model`` (an snnTorch module or its ``(Linear,
    neuron)`` pairs), layer by layer in order, whatever its attribute names.

    ``fc{i}.weight`` goes into the i-th ``nn.Linear``'s weight and the biases into its bias:
    ``fc{i}.bias`` plus ``lif{i}.v_bias`` where the layer has no current memory (a voltage
    bias then equals a current bias), ``lif{i}.v_bias`` divided back by the factor
    :func:`~polystep_neuro.run.interop.to_device_semantics` multiplied a Synaptic layer's
    bias by where it has.  Where the model's own threshold differs from the spec's (per-neuron
    thresholds that the import normalised to 1), each neuron's weights and bias are scaled
    by the ratio, so the model spikes as the spec does.  The model keeps its own neurons
    (reset mode, timing): loaded into snnTorch, a device-timed network computes snnTorch's
    version of itself.
    """
    from polystep_neuro.run.interop import mean_current_gain

    if spec.output_copies != 1:
        warnings.warn(
            f"the device counts each class over {spec.output_copies} output neurons; your "
            "module has one a class and gets the first copy of each (the network before "
            "deploy's tie splitting)",
            stacklevel=3,
        )
        spec = spec.first_output_copy()
    pairs = _layer_pairs(model)
    if len(pairs) != len(spec.layers):
        raise SpecError(
            f"the model has {len(pairs)} Linear + neuron layers, the adapted network "
            f"{len(spec.layers)}"
        )
    if any(tuple(linear.weight.shape) != layer.weight.shape
           for ((_, linear), _), layer in zip(pairs, spec.layers, strict=True)):  # fmt: skip
        sizes = [pairs[0][0][1].in_features] + [linear.out_features for (_, linear), _ in pairs]
        raise SpecError(  # before any warning about its neurons: it is another network
            f"the model is {'-'.join(map(str, sizes))}, the adapted network "
            f"{'-'.join(map(str, spec.sizes))}: load into a model of the adapted network's sizes"
        )
    _warn_other_neurons(spec, pairs)
    for i, ((name, linear), (lif_name, neuron)) in enumerate(pairs):
        layer = spec.layers[i]
        assert isinstance(linear, nn.Linear) and layer.v_bias is not None
        v_bias = np.asarray(layer.v_bias, dtype=np.float32)
        if np.float32(layer.du) != 1:
            gain = mean_current_gain(layer.du, spec.num_steps)
            v_bias = (v_bias.astype(np.float64) / gain).astype(np.float32)
        bias = v_bias if layer.bias is None else v_bias + layer.bias
        weight = np.asarray(layer.weight, dtype=np.float32)
        own = _values(lif_name, neuron, "threshold", layer.n_out, clamp=False).double().numpy()
        if layer.vth > 0 and np.any(own != np.float32(layer.vth)):
            factor = np.broadcast_to(own / float(layer.vth), (layer.n_out,))
            weight = (weight * factor[:, None]).astype(np.float32)
            bias = (bias * factor).astype(np.float32)
        if linear.bias is None and np.any(bias != 0):
            raise SpecError(
                f"layer {name} has no bias, but the network to load biases its neurons; "
                "build it with nn.Linear(..., bias=True)"
            )
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
            if linear.bias is not None:
                linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def _warn_other_neurons(spec: NetworkSpec, pairs: list[Any]) -> None:
    """Values adapted on a device's neurons go into a module whose neurons reset otherwise:
    the module then computes its own version of the network, which a user measured 12
    points less accurate than the device's; said once, so they score it before use."""

    def said(reset: str, delay: bool) -> str:
        return f"{reset!r}{' one step late' if delay else ' in the spiking step'}"

    differ = []  # (layer, the module's reset, its delay) where they are not the spec's
    for i, (_, (_, neuron)) in enumerate(pairs):
        code = int(getattr(neuron, "reset_mechanism_val", -1))
        layer = spec.layers[i]
        delay = bool(getattr(neuron, "reset_delay", layer.reset_delay))
        if code in _RESETS and (_RESETS[code][0], delay) != (layer.reset, bool(layer.reset_delay)):
            differ.append((i, _RESETS[code][0], delay))
    if differ:
        first, reset, delay = differ[0]
        layer = spec.layers[first]
        warnings.warn(
            f"the adapted values were fitted to neurons that reset "
            f"{said(layer.reset, layer.reset_delay)}, and your module's layers "
            f"{', '.join(str(d[0]) for d in differ)} reset {said(reset, delay)}: it computes "
            "its own version of the adapted network, which can be less accurate than the "
            "device's; score the module on your data before you use it",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- running models
def _simulate(model: Any, inputs: Any, record: bool) -> SnnTorchRecord:
    pairs = _layer_pairs(model)
    first = pairs[0][0][1]
    assert isinstance(first, nn.Linear)
    x = torch.as_tensor(inputs).to(device=first.weight.device, dtype=first.weight.dtype)
    if x.ndim != 3 or x.shape[2] != first.in_features:
        raise SpecError(
            f"inputs must have shape (B, T, {first.in_features}) (batch, time, inputs), "
            f"got {tuple(x.shape)}"
        )
    for _, (_, neuron) in pairs:
        neuron.reset_mem()  # type: ignore[operator]
    n = len(pairs)
    spikes: list[list[torch.Tensor]] = [[] for _ in range(n)]
    mems: list[list[torch.Tensor]] = [[] for _ in range(n)]
    currs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = x[:, t]
            for k, ((_, fc), (_, neuron)) in enumerate(pairs):
                cur = fc(h)
                out = neuron(cur)
                h = out[0] if isinstance(out, tuple) else out
                if record or k == n - 1:
                    spikes[k].append(h)
                if record:
                    mems[k].append(neuron.mem.clone())
                    syn = neuron.syn.clone() if type(neuron) is snn.Synaptic else cur
                    currs[k].append(syn)  # type: ignore[arg-type]

    def stack(seq: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(seq, dim=1) if seq else torch.empty(0)

    out_spikes = stack(spikes[-1])
    counts = out_spikes.sum(dim=1).to(torch.int32)
    if not record:
        return SnnTorchRecord(counts, [], [], [])
    return SnnTorchRecord(
        counts,
        [stack(s) for s in spikes],
        [stack(m) for m in mems],
        [stack(c) for c in currs],
    )


def record_snntorch(model: Any, inputs: Any) -> SnnTorchRecord:
    """Run an snnTorch model (as read by :func:`from_snntorch`) on ``inputs`` (B, T, N_in),
    from a reset hidden state, recording every layer's spikes, membranes and currents."""
    return _simulate(model, inputs, record=True)


def run_snntorch(model: Any, inputs: Any) -> torch.Tensor:
    """Output spike counts (B, N_out, int32) of an snnTorch model on ``inputs`` (B, T, N_in),
    stepping it from a reset hidden state (the model's own neurons; no gradients)."""
    return _simulate(model, inputs, record=False).counts
