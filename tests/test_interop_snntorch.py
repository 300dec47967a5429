"""snnTorch interop: imported models compute exactly what snnTorch computes, round trips are
exact, unsupported models are refused by name, device problems are reported, not hidden."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import polystep_neuro.run.interop as interop
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point
from simulators.torch_lif import TorchLIF

snn = pytest.importorskip("snntorch")

T = 16
B = 4
RESETS = [
    ("zero", False),
    ("zero", True),
    ("subtract", False),
    ("subtract", True),
    ("none", False),
    ("none", True),
]


def _inputs(n_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, n_in, generator=g) < 0.4).float()


def _neuron(kind: str, reset: str, reset_delay: bool, *, last: bool, init_hidden: bool = True):
    common = {
        "threshold": 0.7,
        "reset_mechanism": reset,
        "reset_delay": reset_delay,
        "init_hidden": init_hidden,
        "output": last and init_hidden,
    }
    if kind == "leaky":
        return snn.Leaky(beta=0.8, **common)
    return snn.Synaptic(alpha=0.6, beta=0.85, **common)


def _model(kinds: list[str], reset: str, reset_delay: bool, bias: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    sizes = [10, 14, 12, 6][: len(kinds) + 1]
    modules: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        fc = nn.Linear(n_in, n_out, bias=bias)
        with torch.no_grad():
            fc.weight.mul_(3.0)  # enough drive for real spiking activity
        modules += [fc, _neuron(kinds[k], reset, reset_delay, last=k == len(kinds) - 1)]
    return nn.Sequential(*modules)


def _assert_same_as_snntorch(spec: NetworkSpec, model, x: torch.Tensor, min_spikes: int) -> None:
    ref = interop.record_snntorch(model, x)
    res = TorchLIF(spec).evaluate(None, x.numpy(), record=True)
    assert res.spikes is not None and res.voltages is not None
    total = 0
    for i in range(len(spec.layers)):
        assert torch.equal(res.spikes[i][0].float(), ref.spikes[i]), f"layer {i} spikes differ"
        assert torch.allclose(res.voltages[i][0], ref.membranes[i], atol=1e-6, rtol=0), i
        assert res.currents is not None
        assert torch.allclose(res.currents[i][0], ref.currents[i], atol=1e-6, rtol=0), i
        total += int(ref.spikes[i].sum())
    assert total >= min_spikes, total  # the comparison saw real activity
    assert int(ref.counts.sum()) >= 5
    assert torch.equal(res.counts[0], ref.counts)
    assert torch.equal(interop.run_snntorch(model, x), ref.counts)


def _assert_same_spec(a: NetworkSpec, b: NetworkSpec) -> None:
    meta_a, arrays_a = a.to_arrays()
    meta_b, arrays_b = b.to_arrays()
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for name, value in arrays_a.items():
        assert np.array_equal(arrays_b[name], value), name


# --------------------------------------------------------------------------- snnTorch -> spec
@pytest.mark.parametrize("kind", ["leaky", "synaptic"])
@pytest.mark.parametrize(("reset", "reset_delay"), RESETS)
@pytest.mark.parametrize("bias", [True, False])
def test_imported_model_matches_snntorch(kind: str, reset: str, reset_delay: bool, bias: bool):
    kinds = [kind] * (3 if bias else 2)
    seed = RESETS.index((reset, reset_delay)) + 10 * bias
    model = _model(kinds, reset, reset_delay, bias, seed)
    spec = interop.from_snntorch(model, T)
    for layer in spec.layers:  # carried exactly, semantics unchanged
        assert (layer.reset, layer.reset_delay, layer.delay) == (reset, reset_delay, 0)
        assert layer.neuron == kind and (layer.bias is not None) == bias
        assert layer.dv == 1.0 - float(torch.tensor(0.8 if kind == "leaky" else 0.85))
        assert layer.du == (1.0 if kind == "leaky" else 1.0 - float(torch.tensor(0.6)))
        assert layer.vth == float(torch.tensor(0.7))
        assert not np.any(layer.v_bias)
    assert torch.equal(torch.from_numpy(spec.layers[0].weight), model[0].weight.detach())
    _assert_same_as_snntorch(spec, model, _inputs(10, seed), min_spikes=40)


def test_pairs_mixed_neurons_and_explicit_state_neurons() -> None:
    """(Linear, neuron) pairs, init_hidden=False neurons and Leaky/Synaptic mixed."""
    torch.manual_seed(5)
    fcs = [nn.Linear(10, 14), nn.Linear(14, 12), nn.Linear(12, 6)]
    for fc in fcs:
        fc.weight.data.mul_(3.0)
    lifs = [
        _neuron("leaky", "subtract", True, last=False, init_hidden=False),
        _neuron("synaptic", "zero", False, last=False, init_hidden=False),
        _neuron("leaky", "zero", True, last=True, init_hidden=False),
    ]
    pairs = list(zip(fcs, lifs, strict=True))
    spec = interop.from_snntorch(pairs, T, writable=("fc2.weight", "lif1.vth"))
    assert [layer.neuron for layer in spec.layers] == ["leaky", "synaptic", "leaky"]
    assert spec.writable == ("fc2.weight", "lif1.vth")
    _assert_same_as_snntorch(spec, pairs, _inputs(10, 5), min_spikes=40)


def test_record_matches_the_models_own_forward() -> None:
    model = _model(["synaptic", "leaky"], "subtract", True, True, seed=3)
    x = _inputs(10, 3)
    ref = interop.record_snntorch(model, x)
    for module in model:
        if isinstance(module, snn.SpikingNeuron):
            module.reset_mem()
    with torch.no_grad():
        out = [model(x[:, t]) for t in range(T)]  # last neuron has output=True: (spk, mem)
    assert torch.equal(torch.stack([o[0] for o in out], dim=1), ref.spikes[-1])
    assert torch.equal(torch.stack([o[1] for o in out], dim=1), ref.membranes[-1])
    assert int(ref.counts.sum()) > 5


def test_clamped_and_uniform_tensor_parameters() -> None:
    torch.manual_seed(7)
    fc0, fc1 = nn.Linear(10, 14), nn.Linear(14, 6)
    fc0.weight.data.mul_(3.0)
    fc1.weight.data.mul_(3.0)
    model = nn.Sequential(
        fc0,
        snn.Leaky(beta=1.3, threshold=torch.full((14,), 2.0), init_hidden=True),  # beta -> 1
        fc1,
        snn.Synaptic(
            alpha=-0.5,  # clamped to 0 by snnTorch: no current memory
            beta=torch.full((6,), 0.9),
            learn_beta=True,
            threshold=0.5,
            init_hidden=True,
        ),
    )
    spec = interop.from_snntorch(model, T)
    assert (spec.layers[0].dv, spec.layers[0].vth) == (0.0, 2.0)
    assert (spec.layers[1].du, spec.layers[1].dv) == (1.0, 1.0 - float(torch.tensor(0.9)))
    _assert_same_as_snntorch(spec, model, _inputs(10, 7), min_spikes=20)


def test_decay_below_one_half_is_close_not_exact() -> None:
    """beta/alpha < 0.5: 1 - beta may need more than float32's 24 bits (documented)."""
    torch.manual_seed(8)
    fc = nn.Linear(10, 20)
    fc.weight.data.mul_(4.0)
    model = nn.Sequential(fc, snn.Synaptic(alpha=0.2, beta=0.3, threshold=0.5, init_hidden=True))
    spec = interop.from_snntorch(model, T)
    x = _inputs(10, 8)
    ref = interop.record_snntorch(model, x)
    res = TorchLIF(spec).evaluate(None, x, record=True)
    assert res.voltages is not None and res.spikes is not None
    assert torch.allclose(res.voltages[0][0], ref.membranes[0], atol=1e-5, rtol=0)
    assert torch.equal(res.spikes[0][0].float(), ref.spikes[0])


def test_delay_and_writable_options() -> None:
    model = _model(["leaky", "leaky"], "zero", False, True, seed=1)
    spec = interop.from_snntorch(model, T, delay=1, writable="all")
    assert [layer.delay for layer in spec.layers] == [1, 1]
    assert spec.writable == tuple(spec.param_shapes())
    with pytest.raises(SpecError, match="delay must be 0 .* or 1"):
        interop.from_snntorch(model, T, delay=2)
    with pytest.raises(SpecError, match="unknown parameter name 'fc5.weight'"):
        interop.from_snntorch(model, T, writable=("fc5.weight",))


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("neuron", ["leaky", "synaptic"])
@pytest.mark.parametrize(("reset", "reset_delay"), [("zero", False), ("subtract", True)])
def test_spec_to_snntorch_and_back_is_exact(neuron: str, reset: str, reset_delay: bool) -> None:
    # dv = 0.1: 1 - dv is not a float32, the case a float32 beta would round.
    spec = NetworkSpec.random(
        [10, 12, 5],
        T,
        seed=2,
        du=1.0 if neuron == "leaky" else 0.3,
        dv=0.1,
        vth=0.6,
        weight_gain=3.0,
        bias=True,
        delay=0,
        reset=reset,
        reset_delay=reset_delay,
        writable=("fc1.weight",),
    )
    layers = [replace(layer, neuron=neuron) for layer in spec.layers]
    layers[1].bias = None
    layers[1].dv = 0.7  # >= 0.5 as well
    spec = NetworkSpec(layers, T, spec.writable).validate()
    model = interop.to_snntorch(spec)
    assert [type(m).__name__ for m in model] == ["Linear", type(model[1]).__name__] * 2
    assert isinstance(model[1], snn.Leaky if neuron == "leaky" else snn.Synaptic)
    back = interop.from_snntorch(model, T, writable=spec.writable)
    _assert_same_spec(spec, back)
    _assert_same_as_snntorch(spec, model, _inputs(10, 2), min_spikes=30)


def test_snntorch_to_spec_and_back_gives_identical_outputs() -> None:
    model = _model(["synaptic", "leaky", "synaptic"], "subtract", True, True, seed=4)
    again = interop.to_snntorch(interop.from_snntorch(model, T))
    x = _inputs(10, 4)
    a, b = interop.record_snntorch(model, x), interop.record_snntorch(again, x)
    for i in range(3):
        assert torch.equal(a.spikes[i], b.spikes[i]) and torch.equal(a.membranes[i], b.membranes[i])
        assert torch.equal(a.currents[i], b.currents[i])
    assert int(a.counts.sum()) > 5
    with torch.no_grad():  # the exported model also runs as a plain nn.Sequential
        for module in again:
            if isinstance(module, snn.SpikingNeuron):
                module.reset_mem()
        out = [again(x[:, t]) for t in range(T)]
    assert len(out[0]) == 3  # last Synaptic has output=True: (spk, syn, mem)
    assert torch.equal(torch.stack([o[0] for o in out], dim=1), a.spikes[-1])


def test_v_bias_folds_into_the_linear_bias_only_without_current_memory() -> None:
    spec = NetworkSpec.random(
        [10, 12, 5], T, seed=3, du=1.0, dv=0.1, vth=0.5, weight_gain=3.0, bias=True, delay=0
    )
    spec = spec.with_params(
        {
            "lif0.v_bias": np.full(12, 0.05, np.float32),
            "lif1.v_bias": np.linspace(-0.1, 0.1, 5, dtype=np.float32),
        }
    )
    spec.layers[1].bias = None
    model = interop.to_snntorch(spec)
    assert torch.equal(model[0].bias, torch.from_numpy(spec.layers[0].bias + spec.layers[0].v_bias))
    assert torch.equal(model[2].bias, torch.from_numpy(spec.layers[1].v_bias))
    back = interop.from_snntorch(model, T)
    assert not np.any(back.layers[0].v_bias) and back.layers[1].bias is not None
    # Same sums in a different order: exact in real arithmetic, float32 may differ in ulps.
    x = _inputs(10, 3)
    ref = interop.record_snntorch(model, x)
    res = TorchLIF(spec).evaluate(None, x, record=True)
    assert res.spikes is not None and res.voltages is not None
    for i in range(2):
        assert torch.equal(res.spikes[i][0].float(), ref.spikes[i])
        assert torch.allclose(res.voltages[i][0], ref.membranes[i], atol=1e-4, rtol=1e-6)
    synaptic = NetworkSpec.random([10, 12, 5], T, seed=3, du=0.3, delay=0)
    synaptic = synaptic.with_params({"lif1.v_bias": np.full(5, 0.1, np.float32)})
    with pytest.raises(SpecError, match=r"layer 1: lif1.v_bias is non-zero and du=0.3"):
        interop.to_snntorch(synaptic)


def test_to_snntorch_refuses_the_lava_delay() -> None:
    spec = NetworkSpec.random([6, 4], 5, seed=0, delay=1)
    with pytest.raises(SpecError, match=r"layer 0: delay=1 .*no snnTorch equivalent"):
        interop.to_snntorch(spec)


# --------------------------------------------------------------------------- refusals
class _MyLeaky(snn.Leaky):
    pass


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.lif1 = snn.Leaky(beta=0.9)


def _changed_reset() -> nn.Module:
    neuron = snn.Leaky(beta=0.9)
    neuron.reset_mechanism = "zero"  # state_function stays _base_sub in snnTorch
    return neuron


def _inhibited() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return snn.Leaky(beta=0.9, inhibition=True)


def _seq(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules)


LIN = nn.Linear
UNSUPPORTED: list[tuple[str, Callable[[], object], str]] = [
    (
        "flatten folding the batch",
        lambda: _seq(nn.Flatten(0), LIN(4, 3), snn.Leaky(0.9)),
        r"layer 0 \(Flatten\)",
    ),
    ("conv", lambda: _seq(nn.Conv2d(1, 2, 3), snn.Leaky(0.9)), r"layer 0 \(Conv2d\)"),
    ("alpha", lambda: _seq(LIN(4, 3), snn.Alpha(alpha=0.9, beta=0.8)), r"layer 1 \(Alpha\)"),
    (
        "rleaky",
        lambda: _seq(LIN(4, 3), snn.RLeaky(beta=0.9, linear_features=3)),
        r"layer 1 \(RLeaky\): a recurrent neuron",
    ),
    ("subclass", lambda: _seq(LIN(4, 3), _MyLeaky(0.9)), r"layer 1 \(_MyLeaky\): a subclass"),
    (
        "per-neuron beta",
        lambda: _seq(LIN(4, 3), snn.Leaky(beta=torch.tensor([0.5, 0.7, 0.9]))),
        r"layer 1 \(Leaky\): per-neuron beta \(values from 0.5 to 0.9\)",
    ),
    (
        "per-neuron threshold",
        lambda: _seq(LIN(4, 3), snn.Synaptic(0.5, 0.5, threshold=torch.tensor([1.0, 1.0, 2.0]))),
        r"layer 1 \(Synaptic\): per-neuron threshold",
    ),
    (
        "per-neuron alpha",
        lambda: _seq(LIN(4, 3), snn.Synaptic(alpha=torch.tensor([0.1, 0.2, 0.3]), beta=0.5)),
        r"layer 1 \(Synaptic\): per-neuron alpha",
    ),
    (
        "beta size",
        lambda: _seq(LIN(4, 3), snn.Leaky(beta=torch.full((5,), 0.9))),
        r"layer 1 \(Leaky\): beta has 5 values for 3 neurons",
    ),
    (
        "nan beta",
        lambda: _seq(LIN(4, 3), snn.Leaky(beta=float("nan"))),
        r"layer 1 \(Leaky\): beta must be finite",
    ),
    (
        "graded spikes",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9, graded_spikes_factor=2.0)),
        r"layer 1 \(Leaky\): graded_spikes_factor=\[2.0\]",
    ),
    (
        "learnable graded spikes",
        lambda: _seq(
            LIN(4, 3), snn.Leaky(0.9, graded_spikes_factor=0.5, learn_graded_spikes_factor=True)
        ),
        r"layer 1 \(Leaky\): graded_spikes_factor=\[0.5\]",
    ),
    ("inhibition", lambda: _seq(LIN(4, 3), _inhibited()), r"layer 1 \(Leaky\): inhibition=True"),
    (
        "state_quant",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9, state_quant=lambda m: m)),
        r"layer 1 \(Leaky\): state_quant",
    ),
    (
        "spike_grad",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9, spike_grad=torch.sigmoid)),
        r"layer 1 \(Leaky\): a spike_grad whose forward pass is not the step",
    ),
    (
        "reset changed",
        lambda: _seq(LIN(4, 3), _changed_reset()),
        r"layer 1 \(Leaky\): reset_mechanism was changed to 'zero' after construction",
    ),
    (
        "negative threshold",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9, threshold=-0.5)),
        r"layer 1 \(Leaky\): threshold=-0.5 < 0",
    ),
    (
        "two linear",
        lambda: _seq(LIN(4, 5), LIN(5, 3), snn.Leaky(0.9)),
        r"layer 1 \(Linear\): two nn.Linear in a row \(after layer 0\)",
    ),
    (
        "trailing linear",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9), LIN(3, 2)),
        r"layer 2 \(Linear\): an nn.Linear that is not followed by a spiking neuron",
    ),
    (
        "neuron first",
        lambda: _seq(snn.Leaky(0.9), LIN(4, 3), snn.Leaky(0.9)),
        r"layer 0 \(Leaky\): a spiking neuron with no nn.Linear before it \(at the start\)",
    ),
    (
        "two neurons",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9), snn.Synaptic(0.5, 0.5)),
        r"layer 2 \(Synaptic\): .*\(after layer 1 \(Leaky\)\)",
    ),
    (
        "shape mismatch",
        lambda: _seq(LIN(4, 5), snn.Leaky(0.9), LIN(6, 3), snn.Leaky(0.9)),
        r"layer 2 \(Linear\): in_features=6 but the previous layer has 5 neurons",
    ),
    (
        "float64",
        lambda: _seq(LIN(4, 3), snn.Leaky(0.9)).double(),
        r"layer 0 \(Linear\): torch.float64 parameters",
    ),
    (
        "nested sequential",
        lambda: _seq(_seq(LIN(4, 3), snn.Leaky(0.9)), _seq(LIN(3, 2), snn.Alpha(0.9, 0.8))),
        r"layer 1.1 \(Alpha\)",
    ),
    (
        "pairs",
        lambda: [(LIN(4, 3), snn.Leaky(0.9)), (LIN(3, 2), snn.Alpha(0.9, 0.8))],
        r"layer 1\[1\] \(Alpha\)",
    ),
]


@pytest.mark.parametrize(
    ("builder", "pattern"), [(b, p) for _, b, p in UNSUPPORTED], ids=[n for n, _, _ in UNSUPPORTED]
)
def test_unsupported_layers_are_named(builder: Callable[[], object], pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern) as info:
        interop.from_snntorch(builder(), T)
    if "layer" in pattern:
        assert "supported: an nn.Sequential" in str(info.value)


@pytest.mark.parametrize(
    ("model", "pattern"),
    [
        (_seq(), "the model has no layers"),
        (_Net(), r"cannot read a _Net: its forward\(\)"),
        ([1, 2], "item 0 is a int"),
        (42, "got int"),
    ],
    ids=["empty", "module", "items", "scalar"],
)
def test_unreadable_models(model: object, pattern: str) -> None:
    with pytest.raises(SpecError, match=pattern):
        interop.from_snntorch(model, T)


def test_run_snntorch_checks_inputs() -> None:
    model = _seq(LIN(4, 3), snn.Leaky(0.9, init_hidden=True))
    with pytest.raises(SpecError, match=r"inputs must have shape \(B, T, 4\).*got \(2, 5, 3\)"):
        interop.run_snntorch(model, torch.zeros(2, 5, 3))


# --------------------------------------------------------------------------- device semantics
def _layer(n_in: int, n_out: int, **kw) -> LayerSpec:
    rng = np.random.default_rng(n_in * 100 + n_out)
    return LayerSpec(weight=rng.normal(size=(n_out, n_in)), **kw)


def _mixed_spec(writable: tuple[str, ...] = ()) -> NetworkSpec:
    layers = [
        _layer(
            6,
            5,
            bias=np.zeros(5),
            du=1.0,
            dv=0.2,
            reset="subtract",
            reset_delay=True,
            delay=0,
            neuron="leaky",
        ),
        _layer(5, 4, du=0.5, dv=0.2, reset="zero", reset_delay=False, delay=0),
        _layer(4, 3, du=0.5, dv=0.1, reset="none", reset_delay=False, delay=1),
    ]
    return NetworkSpec(layers, 8, writable).validate()


def test_device_compatibility_lists_every_problem() -> None:
    assert interop.device_compatibility(_mixed_spec()) == [
        "layer 0: reset='subtract'; Loihi 2 neurons reset to zero (reset='zero')",
        "layer 0: reset_delay=True; Loihi 2 resets in the spiking step (reset_delay=False)",
        "layer 0: delay=0; every Lava Dense layer delivers its output one step later (delay=1)",
        "layer 1: delay=0; every Lava Dense layer delivers its output one step later (delay=1)",
        "layer 2: reset='none'; Loihi 2 neurons reset to zero (reset='zero')",
    ]
    assert interop.device_compatibility(_mixed_spec(("lif0.du",)))[3] == (
        "layer 0: fc0.bias with lif0.du writable; the device folds a Dense bias into the "
        "neuron bias, which is exact only while du stays 1"
    )
    spec = NetworkSpec.random([6, 5, 3], 8, seed=0, du=0.5, bias=True)
    assert interop.device_compatibility(spec) == [
        f"layer {i}: fc{i}.bias with du=0.5; the device adds a Dense bias to the voltage "
        f"(as the neuron bias), which equals a current bias only when du = 1"
        for i in range(2)
    ]
    with pytest.raises(SpecError, match="du = 1"):  # the fixed-point model agrees
        fixed_point.check_fixed_compatible(spec)
    assert interop.device_compatibility(NetworkSpec.random([6, 5, 3], 8, seed=0)) == []


def test_to_device_semantics_reports_what_it_changed() -> None:
    spec = _mixed_spec()
    device_spec, changes = interop.to_device_semantics(spec)
    kept_part = "(the device zeroes the voltage after a spike, where this layer kept "
    delayed = "(its input arrives one step later, so the layer misses the last step's input)"
    assert changes == [
        f"layer 0: reset 'subtract' -> 'zero' {kept_part}what was above the threshold) "
        "[approximate]",
        "layer 0: reset_delay True -> False (the device resets in the spiking step) [approximate]",
        f"layer 0: delay 0 -> 1 {delayed} [approximate]",
        "layer 0: fc0.bias folded into lif0.v_bias (without current memory a current bias is a "
        "voltage bias; exact up to float32 rounding)",
        f"layer 1: delay 0 -> 1 {delayed} [approximate]",
        f"layer 2: reset 'none' -> 'zero' {kept_part}all of it) [approximate]",
    ]
    assert [(c.layer, c.exact) for c in changes] == [
        (0, False), (0, False), (0, False), (0, True), (1, False), (2, False)
    ]  # fmt: skip
    assert interop.device_compatibility(device_spec) == []
    fixed_point.check_fixed_compatible(device_spec)
    assert [layer.neuron for layer in device_spec.layers] == ["leaky", "synaptic", "synaptic"]
    assert spec.layers[0].reset == "subtract" and spec.layers[0].delay == 0  # original kept
    assert all(layer.bias is None for layer in device_spec.layers)  # Lava has no Dense bias
    for name, value in spec.parameters().items():
        if name != "fc0.bias":
            assert np.array_equal(device_spec.parameters()[name], value), name
    again, none = interop.to_device_semantics(device_spec)
    assert none == []
    _assert_same_spec(device_spec, again)


def test_a_current_bias_with_current_memory_becomes_the_voltage_bias_of_equal_charge() -> None:
    """A Synaptic layer's Dense bias ramps up in the current; the device's neuron bias is
    constant: the conversion picks the constant that delivers the same charge over the run,
    says it is approximate, and the per-step current of the two agrees once settled."""
    spec = NetworkSpec.random([6, 5, 3], 8, du=0.5, bias=True, writable=("fc0.bias",))
    device_spec, changes = interop.to_device_semantics(spec)
    bias_changes = [c for c in changes if "fc" in c and ".bias" in c]
    assert [(c.layer, c.exact) for c in bias_changes] == [(0, False), (1, False)]
    assert "the constant that delivers the same charge over the 8 steps" in bias_changes[0]
    # the current a unit bias builds: 1, 1.5, 1.75, ... (du = 0.5); mean over 8 steps
    ramp = np.cumsum(0.5 ** np.arange(8))
    assert interop.mean_current_gain(0.5, 8) == pytest.approx(ramp.mean(), rel=1e-12)
    for i in range(2):
        np.testing.assert_allclose(
            device_spec.layers[i].v_bias, spec.layers[i].bias * ramp.mean(), rtol=1e-6
        )
    assert device_spec.writable == ("lif0.v_bias",)  # the bias it adapts is the neuron's
    fixed_point.check_fixed_compatible(device_spec)


def test_imported_snntorch_defaults_are_reported_not_changed() -> None:
    torch.manual_seed(0)
    model = _seq(LIN(6, 5), snn.Leaky(beta=0.9, init_hidden=True))  # subtract, reset_delay
    spec = interop.from_snntorch(model, 8)
    assert (spec.layers[0].reset, spec.layers[0].reset_delay, spec.layers[0].delay) == (
        "subtract",
        True,
        0,
    )
    assert len(interop.device_compatibility(spec)) == 3
    _, changes = interop.to_device_semantics(spec)
    # reset, reset delay and delay (approximate); the Linear bias folded (exact)
    assert [c.exact for c in changes] == [False, False, False, True]


def test_per_neuron_and_learnable_values_are_mapped_and_reported() -> None:
    """Learnable per-neuron thresholds become threshold 1 with each neuron's weights and bias
    divided by its own (the same spikes); per-neuron decays become the layer's mean, said to
    be approximate.  from_snntorch, which is exact or refuses, refuses both."""
    torch.manual_seed(2)
    thresholds = torch.linspace(0.6, 1.4, 5)
    model = _seq(
        LIN(6, 5),
        snn.Leaky(beta=0.9, threshold=thresholds, learn_threshold=True, init_hidden=True),
        LIN(5, 3),
        snn.Leaky(beta=0.8, learn_beta=True, init_hidden=True, output=True),
    )
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    spec, notes = interop.snntorch_spec(model, 8)
    assert [(n.layer, n.exact) for n in notes] == [(0, True)]
    assert "per-neuron thresholds (0.6 to 1.4) -> threshold 1" in notes[0]
    assert spec.layers[0].vth == 1.0 and spec.layers[1].vth == 1.0
    np.testing.assert_allclose(
        spec.layers[0].weight * thresholds.numpy()[:, None],
        model[0].weight.detach().numpy(),
        rtol=1e-6,
    )
    x = (np.random.default_rng(0).random((40, 8, 6)) < 0.5).astype(np.float32)
    counts = TorchLIF(spec).counts({}, x)[0].numpy()
    expected = interop.run_snntorch(model, x).numpy()
    assert expected.sum() > 40
    assert np.mean(counts == expected) > 0.97  # exact up to float32 rounding at the threshold
    with pytest.raises(SpecError, match="per-neuron threshold"):
        interop.from_snntorch(model, 8)

    betas = torch.tensor([0.7, 0.8, 0.9])
    decaying = _seq(LIN(6, 3), snn.Leaky(beta=betas, learn_beta=True, init_hidden=True))
    spec, notes = interop.snntorch_spec(decaying, 8)
    assert [(n.layer, n.exact) for n in notes] == [(0, False)]
    assert "per-neuron beta (0.7 to 0.9) -> their mean 0.8" in notes[0]
    assert spec.layers[0].dv == pytest.approx(0.2, abs=1e-7)


def _two_spiking_linears() -> tuple[nn.Linear, nn.Linear, dict]:
    """A 6-5-3 pair of Linear layers strong enough to spike, and tutorial-style Leaky kwargs."""
    torch.manual_seed(0)
    fc0, fc1 = nn.Linear(6, 5), nn.Linear(5, 3)
    with torch.no_grad():
        fc0.weight.mul_(3.0)
        fc1.weight.mul_(3.0)
    return fc0, fc1, {"beta": 0.9, "init_hidden": True}


def test_a_dropout_layer_is_left_out_and_said() -> None:
    """A trained model with nn.Dropout was refused with a 600-character message (even at
    p=0); it passes its input unchanged once trained, so it is left out, with a note, and
    the model's own run skips it too (in train mode it would drop spikes at random)."""
    from polystep_neuro.run.interop.snntorch import run_snntorch, snntorch_spec

    fc0, fc1, kw = _two_spiking_linears()
    with_dropout = nn.Sequential(fc0, nn.Dropout(0.5), snn.Leaky(**kw), fc1,
                                 snn.Leaky(output=True, **kw))  # fmt: skip
    plain = nn.Sequential(fc0, snn.Leaky(**kw), fc1, snn.Leaky(output=True, **kw))
    spec, notes = snntorch_spec(with_dropout, 8)
    assert notes[0] == (
        "layer 0: nn.Dropout '1' left out: it passes its input unchanged once trained"
    )
    x = (np.random.default_rng(0).random((10, 8, 6)) < 0.5).astype(np.float32)
    counts = run_snntorch(with_dropout, x)
    assert torch.equal(counts, run_snntorch(plain, x)) and int(counts.sum()) > 0
    np.testing.assert_array_equal(TorchLIF(spec).counts({}, x)[0].numpy(), counts.numpy())


def test_a_flatten_layer_is_left_out_and_said() -> None:
    """snnTorch's tutorials start image models with nn.Flatten: on the flat per-step inputs
    the device takes it is the identity, so it is left out with a note (it was refused);
    one that folds the batch too is refused, naming it."""
    from polystep_neuro.run.interop.snntorch import run_snntorch, snntorch_spec

    fc0, fc1, kw = _two_spiking_linears()
    flat = nn.Sequential(nn.Flatten(), fc0, snn.Leaky(**kw), fc1, snn.Leaky(output=True, **kw))
    spec, notes = snntorch_spec(flat, 8)
    assert notes == [
        "layer 0: nn.Flatten '0' left out: the device takes every time step's inputs as one "
        "flat vector already (give spikes (n, T, N_in))"
    ]
    x = (np.random.default_rng(0).random((10, 8, 6)) < 0.5).astype(np.float32)
    counts = run_snntorch(flat, x)
    assert int(counts.sum()) > 0
    np.testing.assert_array_equal(TorchLIF(spec).counts({}, x)[0].numpy(), counts.numpy())
    folding = nn.Sequential(nn.Flatten(0), fc0, snn.Leaky(**kw), fc1, snn.Leaky(output=True, **kw))
    with pytest.raises(SpecError, match=r"folds the batch too \(start_dim=0, not 1\)"):
        snntorch_spec(folding, 8)


@pytest.mark.parametrize("kind", ["RLeaky", "RSynaptic"])
def test_a_recurrent_neuron_is_refused_as_recurrent(kind: str) -> None:
    """snn.RLeaky got 'this layer type is not supported' and the supported list: what it is
    (a recurrent neuron, which no conversion keeps) is said first."""
    from polystep_neuro.run.interop.snntorch import snntorch_spec

    extra = {"alpha": 0.8} if kind == "RSynaptic" else {}
    neuron = getattr(snn, kind)(beta=0.9, linear_features=3, init_hidden=True, output=True, **extra)
    with pytest.raises(SpecError, match=rf"layer 1 \({kind}\): a recurrent neuron \(its spikes "
                       r"feed back through its own weights\)"):  # fmt: skip
        snntorch_spec(nn.Sequential(nn.Linear(4, 3), neuron), 5)


def test_load_into_says_when_the_modules_neurons_reset_otherwise() -> None:
    """Values fitted to the device's zero reset, loaded into snnTorch's default (subtract,
    one step late) neurons, compute another network (a user measured 12 points less clean
    accuracy in snnTorch than on the device): said once; the module's own semantics, silent."""
    from polystep_neuro.run.interop.snntorch import load_into

    model = _model(["leaky", "leaky"], "subtract", True, True, seed=0)
    own = interop.from_snntorch(model, T)
    device, _ = interop.to_device_semantics(own)
    with pytest.warns(UserWarning, match=r"^the adapted values were fitted to neurons that reset "
                      r"'zero' in the spiking step, and your module's layers 0, 1 reset "
                      r"'subtract' one step late: it computes its own version"):  # fmt: skip
        load_into(device, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_into(own, model)  # the same neurons: nothing to say


def test_load_into_a_model_of_other_sizes_says_both_sizes_and_warns_of_nothing() -> None:
    """A user's wrong-size module got the reset warning first, then 'layer 0: weight (64,
    784) vs adapted (100, 784)': one error naming both networks, before any warning."""
    from polystep_neuro.run.interop.snntorch import load_into

    model = _model(["leaky", "leaky"], "subtract", True, True, seed=0)
    device, _ = interop.to_device_semantics(interop.from_snntorch(model, T))
    sizes = device.sizes
    other = NetworkSpec.random([sizes[0], sizes[1] + 3, sizes[2]], num_steps=T, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SpecError) as caught:
            load_into(other, model)
    assert str(caught.value) == (
        f"the model is {'-'.join(map(str, sizes))}, the adapted network "
        f"{sizes[0]}-{sizes[1] + 3}-{sizes[2]}: load into a model of the adapted network's sizes"
    )
