"""NIR interop: hand-built graphs compute what NIR's equations say, spec -> NIR -> spec is
bit-exact, snnTorch's exporter and importer agree spike for spike where they work with the
installed versions (and where they do not, the failure is pinned down), and every graph a
NetworkSpec cannot represent is refused with one sentence naming the node."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point
from simulators.torch_lif import TorchLIF

nir = pytest.importorskip("nir")
from polystep_neuro.run.interop.nir import (  # noqa: E402
    DEFAULT_DT,
    from_nir,
    read_nir,
    to_nir,
    write_nir,
)

T = 24
B = 16


def _spikes(n_in: int, seed: int, density: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((B, T, n_in)) < density).astype(np.float32)


def _counts(spec: NetworkSpec, x: np.ndarray) -> np.ndarray:
    return TorchLIF(spec).counts({}, x)[0].numpy()


# --------------------------------------------------------------------------- a reference
def _euler_counts(graph, x: np.ndarray, dt: float) -> np.ndarray:
    """NIR's ODEs stepped by forward Euler in float64, straight from the graph's nodes
    (independent of polystep_neuro's importer and simulator).  A Delay node of dt holds its
    input back one step."""
    order = ["input"]
    succ = dict(graph.edges)
    while order[-1] in succ:
        order.append(succ[order[-1]])
    h = x.astype(np.float64)  # (B, T, n)
    for name in order[1:-1]:
        node = graph.nodes[name]
        if isinstance(node, nir.Delay):
            steps = int(round(float(np.asarray(node.delay).flat[0]) / dt))
            h = np.concatenate([np.zeros_like(h[:, :steps]), h[:, : T - steps]], axis=1)
        elif isinstance(node, nir.Affine):
            h = h @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
        elif isinstance(node, nir.Linear):
            h = h @ np.asarray(node.weight, np.float64).T
        else:
            cuba = isinstance(node, nir.CubaLIF)
            tau_mem = np.asarray(node.tau_mem if cuba else node.tau, np.float64)
            n = h.shape[2]
            i_syn = np.zeros((B, n))
            v = np.zeros((B, n))
            out = np.zeros_like(h)
            for t in range(T):
                if cuba:
                    i_syn = i_syn + dt / node.tau_syn * (node.w_in * h[:, t] - i_syn)
                    drive = node.r * i_syn
                else:
                    drive = node.r * h[:, t]
                v = v + dt / tau_mem * (node.v_leak - v + drive)
                spike = v > node.v_threshold
                v = np.where(spike, node.v_reset, v)
                out[:, t] = spike
            h = out
    return h.sum(axis=1).astype(np.int64)


def _lif(n: int, tau: float, vth: float, dt: float, *, r: float | None = None, v_leak=0.0):
    return nir.LIF(
        tau=np.full(n, tau),
        r=np.full(n, tau / dt if r is None else r),
        v_leak=np.broadcast_to(np.asarray(v_leak, dtype=np.float64), (n,)).copy(),
        v_threshold=np.full(n, vth),
        v_reset=np.zeros(n),
    )


def _cuba(n: int, tau_syn: float, tau_mem: float, vth: float, dt: float, *, v_leak=0.0):
    return nir.CubaLIF(
        tau_syn=np.full(n, tau_syn),
        tau_mem=np.full(n, tau_mem),
        r=np.full(n, tau_mem / dt),
        w_in=np.full(n, tau_syn / dt),
        v_leak=np.broadcast_to(np.asarray(v_leak, dtype=np.float64), (n,)).copy(),
        v_threshold=np.full(n, vth),
        v_reset=np.zeros(n),
    )


def _chain(*pairs, n_in: int, metadata=None):
    nodes = {"input": nir.Input(input_type=np.array([n_in]))}
    nodes.update(pairs)
    last = list(nodes.values())[-1]
    nodes["output"] = nir.Output(output_type=np.array(last.output_type["output"]))
    names = list(nodes)
    return nir.NIRGraph(
        nodes=nodes, edges=list(zip(names[:-1], names[1:], strict=True)), metadata=metadata or {}
    )


def _weights(rng, n_out: int, n_in: int, gain: float = 2.5) -> np.ndarray:
    return (rng.normal(0.0, gain / np.sqrt(n_in), (n_out, n_in))).astype(np.float32)


# --------------------------------------------------------------------------- hand-built graphs
def test_hand_built_lif_and_cubalif_chain_matches_eulers_equations() -> None:
    dt = 1e-3
    rng = np.random.default_rng(0)
    w0, b0, w1 = _weights(rng, 9, 7), rng.normal(0, 0.1, 9).astype(np.float32), _weights(rng, 4, 9)
    v_leak = rng.normal(0.0, 0.5, 9)
    graph = _chain(
        ("fc0", nir.Affine(weight=w0, bias=b0)),
        ("lif0", _lif(9, 5e-3, 0.8, dt, v_leak=v_leak)),
        ("fc1", nir.Linear(weight=w1)),
        ("lif1", _cuba(4, 2e-3, 8e-3, 0.6, dt)),
        n_in=7,
    )
    spec = from_nir(graph, T, dt=dt)
    first, second = spec.layers
    assert (first.neuron, first.du, first.dv) == ("leaky", 1.0, np.float32(0.2))
    assert first.vth == np.float32(0.8)
    assert first.bias is not None and first.bias.tobytes() == b0.tobytes()
    assert first.weight.tobytes() == w0.tobytes()
    np.testing.assert_array_equal(first.v_bias, (0.2 * v_leak).astype(np.float32))
    assert (second.neuron, second.du, second.dv) == ("synaptic", 0.5, 0.125)
    assert second.bias is None and float(second.vth) == np.float32(0.6)
    assert [layer.delay for layer in spec.layers] == [0, 0]
    assert all(layer.reset == "zero" and not layer.reset_delay for layer in spec.layers)
    x = _spikes(7, 1)
    ref = _euler_counts(graph, x, dt)
    assert ref.sum() > 50 and (ref == 0).mean() < 0.7  # real activity, not an empty net
    np.testing.assert_array_equal(_counts(spec, x), ref)


def test_non_unit_input_gain_is_folded_into_the_weights() -> None:
    """r = 1 (Norse's convention) gives an input gain of dt/tau per step: the importer scales
    the weights and bias by it, so the counts follow NIR's equations."""
    dt = 1e-3
    rng = np.random.default_rng(3)
    w0 = _weights(rng, 8, 6, gain=25.0)
    b0 = rng.normal(0, 1.0, 8).astype(np.float32)
    graph = _chain(
        ("fc0", nir.Affine(weight=w0, bias=b0)),
        ("lif0", _lif(8, 1e-2, 1.0, dt, r=1.0)),
        n_in=6,
    )
    spec = from_nir(graph, T, dt=dt)
    np.testing.assert_array_equal(spec.layers[0].weight, (w0 * np.float64(0.1)).astype(np.float32))
    x = _spikes(6, 4)
    ref = _euler_counts(graph, x, dt)
    assert ref.sum() > 30
    np.testing.assert_array_equal(_counts(spec, x), ref)


def test_delay_node_before_the_weights_is_lavas_one_step_delay() -> None:
    dt = 1e-3
    rng = np.random.default_rng(5)
    graph = _chain(
        ("d0", nir.Delay(delay=np.full(6, dt))),
        ("fc0", nir.Affine(weight=_weights(rng, 8, 6), bias=np.zeros(8, np.float32))),
        ("lif0", _cuba(8, 2e-3, 4e-3, 0.5, dt)),
        n_in=6,
    )
    spec = from_nir(graph, T, dt=dt)
    assert spec.layers[0].delay == 1
    x = _spikes(6, 6)
    ref = _euler_counts(graph, x, dt)
    assert ref.sum() > 30
    np.testing.assert_array_equal(_counts(spec, x), ref)
    with pytest.raises(SpecError, match=r"delay 0.001 is 0.5 steps of dt=0.002"):
        from_nir(graph, T, dt=2 * dt)  # the same Delay is half a step of a longer dt


# --------------------------------------------------------------------------- round trips
def _specs() -> list[NetworkSpec]:
    rng = np.random.default_rng(11)
    synaptic = NetworkSpec.random(
        [10, 12, 5], T, seed=1, du=0.3, dv=0.15, bias=True, writable=("fc1.weight",)
    )
    synaptic = synaptic.with_params({"lif0.v_bias": rng.normal(0, 0.3, 12).astype(np.float32)})
    leaky = NetworkSpec.random([10, 7, 6, 3], T, seed=2, du=1.0, dv=0.37, delay=0)
    leaky = NetworkSpec([replace(layer, neuron="leaky") for layer in leaky.layers], T)
    leaky = leaky.with_params({"lif1.v_bias": rng.normal(0, 0.2, 6).astype(np.float32)})
    odd = NetworkSpec.random([10, 9, 4], T, seed=3, du=0.013, dv=0.999, vth=0.31, delay=1)
    odd = odd.with_writable(("fc0.weight", "lif1.v_bias"))
    device = NetworkSpec.random([10, 12, 5], T, seed=4, du=0.25, dv=0.1, writable=("fc1.weight",))
    device = device.with_params({"lif1.v_bias": rng.normal(0, 0.3, 5).astype(np.float32)})
    return [synaptic, fixed_point.calibrate(device), leaky, odd]


def _assert_identical(a: NetworkSpec, b: NetworkSpec) -> None:
    meta_a, arrays_a = a.to_arrays()
    meta_b, arrays_b = b.to_arrays()
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype == np.float32, name
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name


@pytest.mark.parametrize("index", range(4))
def test_round_trip_is_bit_exact(index: int, tmp_path: Path) -> None:
    spec = _specs()[index]
    _assert_identical(from_nir(to_nir(spec)), spec)
    path = tmp_path / "net.nir"
    write_nir(spec, path, dt=2.5e-3)
    back = read_nir(path)
    _assert_identical(back, spec)
    assert float(nir.read(path).metadata["dt"]) == 2.5e-3
    x = _spikes(spec.n_in, index)
    np.testing.assert_array_equal(_counts(back, x), _counts(spec, x))
    if spec.layers[0].fixed_scale is not None:
        fixed_a = TorchLIF(spec, "loihi-fixed").counts({}, x)
        fixed_b = TorchLIF(back, "loihi-fixed").counts({}, x)
        assert torch.equal(fixed_a, fixed_b)


def test_exported_graph_structure_and_values() -> None:
    spec = _specs()[0]
    graph = to_nir(spec)
    assert list(graph.nodes) == [
        "input", "delay0", "fc0", "lif0", "delay1", "fc1", "lif1", "output"
    ]  # fmt: skip
    layer = spec.layers[0]
    lif0 = graph.nodes["lif0"]
    assert isinstance(lif0, nir.CubaLIF)
    du, dv = float(np.float32(0.3)), float(np.float32(0.15))
    np.testing.assert_array_equal(lif0.tau_syn, np.full(12, DEFAULT_DT / du))
    np.testing.assert_array_equal(lif0.tau_mem, np.full(12, DEFAULT_DT / dv))
    np.testing.assert_allclose(lif0.w_in * DEFAULT_DT / lif0.tau_syn, 1.0, rtol=1e-15)
    np.testing.assert_allclose(lif0.r * DEFAULT_DT / lif0.tau_mem, 1.0, rtol=1e-15)
    np.testing.assert_allclose(lif0.v_leak * dv, layer.v_bias, rtol=1e-12)
    np.testing.assert_array_equal(graph.nodes["delay0"].delay, np.full(10, DEFAULT_DT))
    assert graph.metadata == {
        "dt": DEFAULT_DT,
        "polystep_num_steps": T,
        "polystep_writable": "fc1.weight",
    }


# --------------------------------------------------------------------------- snnTorch
try:  # snnTorch's NIR converters need nirtorch (both in the dev extra)
    import snntorch as snn
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir

    from polystep_neuro.run.interop.snntorch import from_snntorch, run_snntorch
except ImportError:  # pragma: no cover - the dev extra installs them
    snn = None
needs_snntorch = pytest.mark.skipif(
    snn is None, reason="needs snntorch and nirtorch: pip install -e '.[dev]'"
)

SNNTORCH_SCALAR_PARAMS = (
    "snnTorch 1.0.0's export_to_nir writes a scalar beta/threshold as 0-d arrays, so the LIF "
    "node's input type is [] and nir 1.0.8's type check (run by the exporter itself) raises "
    "ValueError 'Type inference error: type mismatch: 0.output: [[5]] -> 1.input: []'"
)
SNNTORCH_BATCH_SAMPLE = (
    "snnTorch 1.0.0's export_to_nir with a batched sample (1, n_in), as its docstring shows, "
    "keeps the batch dimension in the Input node: nir 1.0.8 raises ValueError 'Type inference "
    "error: type mismatch: input.output: [[1 6]] -> 0.input: [[6]]' (ignore_dims=[0] or an "
    "unbatched sample avoids it)"
)
SNNTORCH_RESET = (
    "snnTorch 1.0.0's export_to_nir writes v_reset=0 whatever the reset_mechanism and "
    "reset_delay: a model with its defaults (subtract, reset_delay=True) exports as a "
    "zero-reset network and spikes differently"
)
SNNTORCH_V_LEAK = (
    "snnTorch 1.0.0's import_from_nir asserts v_leak == 0 ('AssertionError: v_leak not "
    "supported'): a voltage bias on a layer with current memory (lif{i}.v_bias, du < 1; "
    "to_nir writes du = 1 ones as Affine biases) cannot be imported by snnTorch"
)
SNNTORCH_DELAY = (
    "snnTorch 1.0.0's import_from_nir (through nirtorch 2.6) has no mapping for Delay nodes: "
    "'ValueError: Unknown node type <class 'nir.ir.delay.Delay'>, mapping does not exist in "
    "node_map', so Lava-timed (delay=1) networks do not import into snnTorch"
)


def _documented(pattern: str, call):
    """Run ``call``; a failure must carry the documented message (else the test fails outright,
    not as an expected failure), and is then re-raised for ``xfail(raises=...)``."""
    try:
        return call()
    except Exception as exc:
        if not re.search(pattern, str(exc)):
            pytest.fail(f"failed differently than documented: {type(exc).__name__}: {exc}")
        raise


def _snn_net(kind: str, *, per_neuron: bool, reset: str = "zero", reset_delay: bool = False):
    torch.manual_seed(7)
    sizes = [6, 5, 3]

    def value(v: float, n: int):
        return torch.full((n,), v) if per_neuron else v

    modules: list[torch.nn.Module] = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        fc = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            fc.weight.mul_(4.0)
        common = {
            "threshold": value(0.9, n_out),
            "reset_mechanism": reset,
            "reset_delay": reset_delay,
            "init_hidden": True,
            "output": k == len(sizes) - 2,
        }
        if kind == "leaky":
            neuron = snn.Leaky(beta=value(0.9 - 0.1 * k, n_out), **common)
        else:
            neuron = snn.Synaptic(
                alpha=value(0.5 + 0.1 * k, n_out), beta=value(0.9 - 0.1 * k, n_out), **common
            )
        modules += [fc, neuron]
    return torch.nn.Sequential(*modules)


@needs_snntorch
@pytest.mark.parametrize("kind", ["leaky", "synaptic"])
def test_snntorch_exported_graph_imports_spike_for_spike(kind: str) -> None:
    """Per-neuron beta/threshold tensors (the form snnTorch's exporter handles), zero reset in
    the spiking step (what NIR's v_reset means)."""
    net = _snn_net(kind, per_neuron=True)
    graph = export_to_nir(net, torch.zeros(6))
    spec = from_nir(graph, T)
    assert [layer.neuron for layer in spec.layers] == [kind, kind]
    assert [layer.delay for layer in spec.layers] == [0, 0]
    direct = from_snntorch(net, T)
    for got, want in zip(spec.layers, direct.layers, strict=True):
        assert got.weight.tobytes() == want.weight.tobytes()
        assert got.dv == pytest.approx(want.dv, rel=1e-6)
        assert got.du == pytest.approx(want.du, rel=1e-6)
    x = _spikes(6, 8)
    expected = run_snntorch(net, torch.from_numpy(x)).numpy()
    assert expected.sum() > 100
    np.testing.assert_array_equal(_counts(spec, x), expected)


@needs_snntorch
@pytest.mark.xfail(strict=True, raises=ValueError, reason=SNNTORCH_SCALAR_PARAMS)
def test_snntorch_exporter_with_scalar_beta() -> None:
    net = _snn_net("leaky", per_neuron=False)
    pattern = re.escape("type mismatch: 0.output: [[5]] -> 1.input: []")
    spec = from_nir(_documented(pattern, lambda: export_to_nir(net, torch.zeros(6))), T)
    x = _spikes(6, 8)
    np.testing.assert_array_equal(_counts(spec, x), run_snntorch(net, torch.from_numpy(x)))


@needs_snntorch
@pytest.mark.xfail(strict=True, raises=ValueError, reason=SNNTORCH_BATCH_SAMPLE)
def test_snntorch_exporter_with_a_batched_sample() -> None:
    net = _snn_net("leaky", per_neuron=True)
    pattern = re.escape("type mismatch: input.output: [[1 6]] -> 0.input: [[6]]")
    spec = from_nir(_documented(pattern, lambda: export_to_nir(net, torch.zeros(1, 6))), T)
    assert spec.n_in == 6


@needs_snntorch
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=SNNTORCH_RESET)
def test_snntorch_exporter_keeps_snntorchs_default_reset() -> None:
    net = _snn_net("synaptic", per_neuron=True, reset="subtract", reset_delay=True)
    spec = from_nir(export_to_nir(net, torch.zeros(6)), T)
    x = _spikes(6, 8)
    np.testing.assert_array_equal(_counts(spec, x), run_snntorch(net, torch.from_numpy(x)))


def _run_imported(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    for sub in module.modules():
        if isinstance(sub, (snn.Leaky, snn.Synaptic)):
            sub.reset_mem()
    counts = 0
    with torch.no_grad():
        for t in range(x.shape[1]):
            out = module(torch.from_numpy(x[:, t]))
            counts = counts + (out[0] if isinstance(out, tuple) else out)
    return np.asarray(counts, dtype=np.int64)


@needs_snntorch
@pytest.mark.parametrize("neuron", ["leaky", "synaptic"])
def test_snntorch_imports_our_graphs_spike_for_spike(neuron: str) -> None:
    spec = NetworkSpec.random([6, 8, 4], T, seed=4, du=1.0 if neuron == "leaky" else 0.3, dv=0.2,
                              weight_gain=3.0, delay=0, bias=True)  # fmt: skip
    spec = NetworkSpec([replace(layer, neuron=neuron) for layer in spec.layers], T)
    x = _spikes(6, 9)
    expected = _counts(spec, x)
    assert expected.sum() > 50
    np.testing.assert_array_equal(_run_imported(import_from_nir(to_nir(spec)), x), expected)


@needs_snntorch
@pytest.mark.parametrize("neuron", ["leaky", "synaptic"])
def test_snntorch_imports_a_voltage_bias_as_an_input_bias(neuron: str) -> None:
    """Without current memory (du = 1) a voltage bias is an input bias: to_nir writes it into
    the Affine node, which snnTorch loads (it refuses v_leak), and the split comes back."""
    spec = NetworkSpec.random([6, 8, 4], T, seed=4, dv=0.2, delay=0, bias=neuron == "leaky")
    spec = NetworkSpec([replace(layer, neuron=neuron) for layer in spec.layers], T)
    spec = spec.with_params({"lif0.v_bias": np.linspace(-0.1, 0.2, 8, dtype=np.float32)})
    graph = to_nir(spec)
    assert np.all(graph.nodes["lif0"].v_leak == 0) and isinstance(graph.nodes["fc0"], nir.Affine)
    x = _spikes(6, 9)
    expected = _counts(spec, x)
    assert expected.sum() > 50
    np.testing.assert_array_equal(_run_imported(import_from_nir(graph), x), expected)
    back = from_nir(graph)
    for name, value in spec.parameters().items():
        assert back.parameters()[name].tobytes() == value.tobytes(), name


@needs_snntorch
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=SNNTORCH_V_LEAK)
def test_snntorch_imports_a_voltage_bias_with_current_memory() -> None:
    spec = NetworkSpec.random([6, 8, 4], T, seed=4, du=0.5, dv=0.2, delay=0)
    spec = spec.with_params({"lif0.v_bias": np.full(8, 0.05, np.float32)})
    module = _documented("^v_leak not supported$", lambda: import_from_nir(to_nir(spec)))
    x = _spikes(6, 9)
    np.testing.assert_array_equal(_run_imported(module, x), _counts(spec, x))


@needs_snntorch
@pytest.mark.xfail(strict=True, raises=ValueError, reason=SNNTORCH_DELAY)
def test_snntorch_imports_a_delay_node() -> None:
    spec = NetworkSpec.random([6, 8, 4], T, seed=4, dv=0.2, delay=1)
    pattern = "Unknown node type <class 'nir.ir.delay.Delay'>, mapping does not exist"
    module = _documented(re.escape(pattern), lambda: import_from_nir(to_nir(spec)))
    x = _spikes(6, 9)
    np.testing.assert_array_equal(_run_imported(module, x), _counts(spec, x))


# --------------------------------------------------------------------------- refusals
def _ok_layer(n_out: int, n_in: int) -> list:
    rng = np.random.default_rng(0)
    return [nir.Linear(weight=_weights(rng, n_out, n_in)), _lif(n_out, 1e-3, 1.0, DEFAULT_DT)]


def _graph(nodes: dict, edges: list, **kw) -> object:
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, **kw)


def _refused(graph, match: str, **kw) -> str:
    with pytest.raises(SpecError, match=match) as info:
        from_nir(graph, T, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_recurrent_edge_is_refused() -> None:
    w, lif = _ok_layer(4, 4)
    nodes = {"input": nir.Input(input_type=np.array([4])), "fc": w, "lif": lif,
             "rec": nir.Linear(weight=np.eye(4, dtype=np.float32)),
             "output": nir.Output(output_type=np.array([4]))}  # fmt: skip
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "output")]
    message = _refused(_graph(nodes, edges), "recurrent connection lif -> rec -> lif")
    assert "feed-forward" in message


def test_nested_graph_is_refused() -> None:
    w, lif = _ok_layer(4, 4)
    inner = _chain(("lif", _lif(4, 1e-3, 1.0, DEFAULT_DT)), n_in=4)
    nodes = {"input": nir.Input(input_type=np.array([4])), "fc": w, "sub": inner,
             "output": nir.Output(output_type=np.array([4]))}  # fmt: skip
    edges = [("input", "fc"), ("fc", "sub"), ("sub", "output")]
    _refused(_graph(nodes, edges), "node 'sub' is a nested NIRGraph")


def test_other_node_types_are_refused() -> None:
    conv = nir.Conv1d(
        input_shape=8, weight=np.ones((2, 1, 3)), stride=1, padding=0, dilation=1, groups=1,
        bias=np.zeros(2),
    )  # fmt: skip
    nodes = {"input": nir.Input(input_type=np.array([1, 8])), "conv": conv,
             "output": nir.Output(output_type=np.array([2, 6]))}  # fmt: skip
    graph = _graph(nodes, [("input", "conv"), ("conv", "output")])
    _refused(graph, r"node 'conv' is a Conv1d, which a NetworkSpec cannot represent; supported")
    w, _ = _ok_layer(4, 4)
    graph = _chain(("fc", w), ("if", nir.IF(r=np.ones(4), v_threshold=np.ones(4))), n_in=4)
    _refused(graph, "node 'if' is a IF")


def test_branches_and_strays_are_refused() -> None:
    w, lif = _ok_layer(4, 4)
    w2, lif2 = _ok_layer(4, 4)
    nodes = {"input": nir.Input(input_type=np.array([4])), "fc": w, "lif": lif, "fc2": w2,
             "lif2": lif2, "output": nir.Output(output_type=np.array([4]))}  # fmt: skip
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output"), ("input", "fc2"), ("fc2", "lif2")]
    _refused(_graph(nodes, edges), r"node 'input' feeds 2 nodes \['fc', 'fc2'\].*no branches")
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output"), ("fc2", "lif2")]
    _refused(_graph(nodes, edges), r"nodes \['fc2', 'lif2'\] are not on the chain")


def test_unrepresentable_parameters_are_refused() -> None:
    rng = np.random.default_rng(0)
    w = nir.Linear(weight=_weights(rng, 3, 4))
    lif = _lif(3, 1e-3, 1.0, DEFAULT_DT)
    lif.tau = np.array([1e-3, 2e-3, 1e-3])
    _refused(_chain(("fc", w), ("lif", lif), n_in=4), r"'lif' \(LIF\): per-neuron tau .*one tau")
    lif = _lif(3, 1e-3, 1.0, DEFAULT_DT)
    lif.v_reset = np.full(3, -0.5)
    _refused(_chain(("fc", w), ("lif", lif), n_in=4), "v_reset=-0.5; a NetworkSpec resets")
    lif = _lif(3, 5e-5, 1.0, DEFAULT_DT)
    _refused(_chain(("fc", w), ("lif", lif), n_in=4), "tau=5e-05 is shorter than dt=0.0001")
    good = _lif(3, 1e-3, 1.0, DEFAULT_DT)
    delay = nir.Delay(delay=np.full(4, 2 * DEFAULT_DT))
    graph = _chain(("d", delay), ("fc", w), ("lif", good), n_in=4)
    _refused(graph, r"node 'd' \(Delay\): delay 0.0002 is 2 steps")
    graph = _chain(("fc", w), ("fc2", nir.Linear(weight=np.eye(3, dtype=np.float32))),
                   ("lif", good), n_in=4)  # fmt: skip
    _refused(graph, "two weight nodes in a row")
    _refused(_chain(("fc", w), n_in=4), "node 'fc' is not followed by a LIF/CubaLIF neuron")
    affine = nir.Affine(weight=_weights(rng, 3, 4), bias=np.ones(3, np.float32))
    graph = _chain(("fc", affine), ("d", nir.Delay(delay=np.full(3, DEFAULT_DT))), ("lif", good),
                   n_in=4)  # fmt: skip
    _refused(graph, "put the Delay before the Affine")


def test_missing_num_steps_file_and_corrupt_file(tmp_path: Path) -> None:
    w, lif = _ok_layer(3, 4)
    graph = _chain(("fc", w), ("lif", lif), n_in=4)
    with pytest.raises(SpecError, match="num_steps is needed"):
        from_nir(graph)
    with pytest.raises(SpecError, match="NIR file not found: .*nothing.nir"):
        from_nir(tmp_path / "nothing.nir", T)
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(SpecError, match=r"bad.nir is not a readable NIR graph: .*") as info:
        from_nir(bad, T)
    assert "\n" not in str(info.value)


def test_export_refuses_what_nir_cannot_say() -> None:
    spec = NetworkSpec.random([4, 3], T, seed=0, reset="subtract", reset_delay=True, delay=0)
    with pytest.raises(SpecError, match=r"layer 0: reset='subtract', reset_delay=True; NIR"):
        to_nir(spec)
    spec = NetworkSpec([LayerSpec(weight=np.ones((3, 4)), du=0.0, dv=0.1)], T)
    with pytest.raises(SpecError, match="layer 0: du=0 is an infinite NIR time constant"):
        to_nir(spec)


def test_time_constants_in_steps_without_a_dt_are_refused_not_read_silent(tmp_path) -> None:
    """Sinabs writes tau in time steps and no dt: read at the default 1e-4 s such a network
    barely leaks and its outputs never spike (a user's 94 % model scored 0 %)."""
    rng = np.random.default_rng(0)
    graph = _chain(("fc", nir.Affine(weight=_weights(rng, 5, 4), bias=np.zeros(5))),
                   ("lif", _lif(5, 10.0, 1.0, 1.0)), n_in=4)  # fmt: skip
    with pytest.raises(SpecError) as info:
        from_nir(graph, T)
    assert str(info.value) == (
        "node 'lif' (LIF): tau=10 and the graph names no dt; read at the default dt=0.0001 s "
        "that is 100,000 steps per time constant, so the graph most likely gives its time "
        "constants in time steps (Sinabs's exporter does): pass --dt 1 (dt=1 from Python), or "
        "the graph's dt in seconds"
    )
    assert from_nir(graph, T, dt=1.0).layers[0].dv == pytest.approx(0.1)
    graph.metadata["dt"] = 1.0  # a graph that names its dt is read at it
    assert from_nir(graph, T).layers[0].dv == pytest.approx(0.1)


def test_an_old_nir_is_named_with_its_fix() -> None:
    from polystep_neuro.run.interop.nir import _nir_version_problem

    assert _nir_version_problem("1.0.8") is None and _nir_version_problem("1.1.0") is None
    assert _nir_version_problem("1.0.4") == (
        "nir 1.0.4 is installed and polystep-neuro needs nir>=1.0.8,<2 (another package's "
        "install may have replaced it: sinabs pins an older one): pip install 'nir>=1.0.8,<2' "
        "(and install such a package with --no-deps)"
    )


def test_a_foreign_graph_takes_its_time_steps_from_the_data(tmp_path: Path, capsys) -> None:
    """A graph from another tool names no T: check and pn.check take it from the data, as
    they do for an snnTorch model."""
    import polystep_neuro as pn
    from polystep_neuro.cli import main as cli_main

    rng = np.random.default_rng(1)
    w, lif = _ok_layer(3, 4)
    graph = _chain(("fc", w), ("lif", lif), n_in=4)
    nir.write(tmp_path / "foreign.nir", graph)
    x = (rng.random((40, 12, 4)) < 0.5).astype(np.float32)
    y = rng.integers(0, 3, 40)
    np.savez(tmp_path / "data.npz", spikes=x, labels=y)
    report = pn.check(graph, "torch-sim", x, y, torch_device="cpu")
    assert report.num_steps == 12
    code = cli_main(["check", "--nir", str(tmp_path / "foreign.nir"), "--data",
                     str(tmp_path / "data.npz"), "--backend", "torch-sim",
                     "--out", str(tmp_path / "c")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "T = 12 time steps per sample, from" in out


def test_convert_says_how_it_read_a_foreign_graph(tmp_path: Path, capsys) -> None:
    """A user could not tell which dt a graph was read at, nor that its input gain (Norse's
    r = 1) went into the weights, nor that the device quantises."""
    from polystep_neuro.cli import main as cli_main

    rng = np.random.default_rng(0)
    graph = _chain(("fc", nir.Affine(weight=_weights(rng, 5, 4), bias=np.zeros(5))),
                   ("lif", _lif(5, 1e-3, 1.0, DEFAULT_DT, r=1.0)), n_in=4)  # fmt: skip
    nir.write(tmp_path / "g.nir", graph)
    assert cli_main(["convert", "--nir", str(tmp_path / "g.nir"), "--time-steps", "10",
                     "--out", str(tmp_path / "g.npz")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "  read: dt = 0.0001 s (the default: the graph names none; --dt / dt= sets it)" in out
    assert "  read: layer 0 (lif, LIF): dv = 0.1, input gain 0.1 folded into its weights" in out
    assert "  quantised on load: torch-sim-fixed runs the weights and neuron parameters" in out
    assert cli_main(["convert", "--nir", str(tmp_path / "g.nir"), "--time-steps", "10",
                     "--dt", "1e-3", "--backend", "torch-sim",
                     "--out", str(tmp_path / "h.npz")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "  read: dt = 0.001 s (--dt / dt=)" in out and "quantised" not in out
