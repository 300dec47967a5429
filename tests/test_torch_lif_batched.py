"""One batched call equals V separate calls; loihi-fixed equals the numpy transcription of Lava."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators import fixed_point as fp
from simulators.torch_lif import TorchLIF
from tests.lava_reference import run_sample

V = 7


def _perturbed_sets(spec: NetworkSpec, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = spec.parameters()
    out = {}
    for name in spec.writable:
        base = params[name]
        if name.endswith((".du", ".dv")):
            out[name] = np.clip(base + rng.uniform(-0.2, 0.2, size=(V,)), 0, 1).astype(np.float32)
        else:
            noise = rng.normal(0, 0.3 * (np.abs(base).mean() + 0.1), size=(V, *base.shape))
            out[name] = (base + noise).astype(np.float32)
    return out


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_a_backend_evaluate_checks_the_batch_once(precision: str, monkeypatch) -> None:
    """The batch is checked where the call enters (the backend), never again inside the
    simulator: one shape check of the parameters and one of the inputs per evaluate."""
    from devices.torch_sim import TorchSimBackend

    spec = NetworkSpec.random([10, 14, 4], 16, seed=5, writable=("fc1.weight",))
    backend = TorchSimBackend(precision, "cpu")
    backend.load(spec)
    calls: list[str] = []
    for name in ("check_param_sets", "check_inputs"):
        method = getattr(NetworkSpec, name)
        monkeypatch.setattr(
            NetworkSpec, name, lambda self, v, m=method, n=name: (calls.append(n), m(self, v))[1]
        )
    x = (np.random.default_rng(1).random((5, 16, 10)) < 0.5).astype(np.uint8)
    counts = backend.evaluate(_perturbed_sets(backend.spec, seed=2), x)
    assert counts.shape == (V, 5, 4)
    assert calls == ["check_param_sets", "check_inputs"]


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
@pytest.mark.parametrize(
    "writable",
    [
        ("fc1.weight",),
        ("fc0.weight", "lif0.vth", "lif1.dv"),
        ("lif0.du", "lif1.v_bias", "fc2.weight"),
    ],
)
def test_batched_equals_one_at_a_time(precision: str, writable: tuple[str, ...]) -> None:
    spec = NetworkSpec.random([10, 14, 9, 4], 16, seed=5, du=0.7, dv=0.2, writable=writable)
    sim = TorchLIF(spec, precision)
    x = (np.random.default_rng(1).random((5, 16, 10)) < 0.5).astype(np.float32)
    sets = _perturbed_sets(spec, seed=2)
    batched = sim.evaluate(sets, x).counts
    assert batched.shape == (V, 5, 4)
    singles = torch.stack(
        [sim.evaluate({k: v[j : j + 1] for k, v in sets.items()}, x).counts[0] for j in range(V)]
    )
    assert torch.equal(batched, singles)
    assert len({tuple(c.flatten().tolist()) for c in batched}) > 1  # the sets really differ


def test_unvaried_parameters_keep_loaded_values() -> None:
    spec = NetworkSpec.random([6, 8, 3], 10, seed=0, writable=("fc1.weight",))
    sim = TorchLIF(spec)
    x = (np.random.default_rng(0).random((4, 10, 6)) < 0.5).astype(np.float32)
    loaded = sim.evaluate(None, x).counts
    same = sim.evaluate({"fc1.weight": spec.layers[1].weight[None].repeat(3, axis=0)}, x).counts
    assert torch.equal(same, loaded.expand(3, -1, -1))


def _fixed_case(seed: int, weight_exp: int, du: float, dv: float, bias: float):
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(3, 12)), int(rng.integers(2, 10)), int(rng.integers(1, 5))]
    spec = NetworkSpec.random(sizes, int(rng.integers(4, 14)), seed=seed, du=du, dv=dv)
    spec = fp.calibrate(spec)
    layers = []
    for layer in spec.layers:
        layer.fixed_weight_exp = weight_exp
        layer.v_bias = rng.normal(0, bias, size=layer.n_out).astype(np.float32)
        layers.append(layer)
    spec = NetworkSpec(layers, spec.num_steps)
    x = (rng.random((3, spec.num_steps, sizes[0])) < 0.6).astype(np.float32)
    return spec, x


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    weight_exp=st.integers(-8, 7),
    du=st.floats(0.0, 1.0),
    dv=st.floats(0.0, 1.0),
    bias=st.sampled_from([0.0, 0.3, 5.0]),
)
def test_fixed_matches_numpy_transcription_of_lava(seed, weight_exp, du, dv, bias) -> None:
    spec, x = _fixed_case(seed, weight_exp, du, dv, bias)
    res = TorchLIF(spec, "loihi-fixed").evaluate(None, x, record=True)
    assert res.spikes is not None and res.voltages is not None and res.currents is not None
    fixed = fp.quantize_spec(spec)
    for b in range(x.shape[0]):
        ref_s, ref_v, ref_u = run_sample(fixed, x[b])
        for i in range(len(fixed)):
            assert np.array_equal(res.spikes[i][0, b].numpy(), ref_s[i]), f"spikes layer {i}"
            assert np.array_equal(res.voltages[i][0, b].numpy(), ref_v[i]), f"v layer {i}"
            assert np.array_equal(res.currents[i][0, b].numpy(), ref_u[i]), f"u layer {i}"


def test_fixed_wrap_paths_match_transcription() -> None:
    # weight_exp 7 on saturated weights drives u past 24 bits: the wrap code must run.
    spec, x = _fixed_case(11, 7, du=0.0, dv=0.0, bias=0.0)
    layers = spec.layers
    layers[0].weight = np.full_like(layers[0].weight, 3.0)
    # A full-range scale by hand (calibrate() would now leave headroom and avoid the wrap).
    layers[0].fixed_scale = fp.WEIGHT_MAX / 3.0 * 2**7
    spec = NetworkSpec(layers, spec.num_steps)
    x = np.ones_like(x)
    res = TorchLIF(spec, "loihi-fixed").evaluate(None, x, record=True)
    assert res.currents is not None
    fixed = fp.quantize_spec(spec)
    ref_s, ref_v, ref_u = run_sample(fixed, x[0])
    assert np.abs(ref_u[0]).max() > 2**22  # really in the wrapping regime
    assert np.array_equal(res.currents[0][0, 0].numpy(), ref_u[0])
    assert np.array_equal(res.voltages[0][0, 0].numpy(), ref_v[0])


def test_bad_inputs_raise_typed_errors() -> None:
    spec = NetworkSpec.random([4, 3], 6, seed=0, writable=("fc0.weight",))
    sim = TorchLIF(spec)
    good_x = np.zeros((2, 6, 4), dtype=np.float32)
    with pytest.raises(SpecError, match=r"inputs must have shape \(B, 6, 4\)"):
        sim.evaluate(None, np.zeros((2, 5, 4)))
    with pytest.raises(SpecError, match=r"'fc0.weight' must have shape \(V, 3, 4\)"):
        sim.evaluate({"fc0.weight": np.zeros((2, 4, 3))}, good_x)
    with pytest.raises(SpecError, match="not writable"):
        sim.evaluate({"lif0.vth": np.ones(2)}, good_x)
    with pytest.raises(SpecError, match="unknown parameter name 'fc9.weight'"):
        sim.evaluate({"fc9.weight": np.ones((1, 3, 4))}, good_x)
    with pytest.raises(SpecError, match="non-finite"):
        sim.evaluate({"fc0.weight": np.full((1, 3, 4), np.nan)}, good_x)
    one_inf = np.zeros((1, 3, 4), dtype=np.float32)
    one_inf[0, 2, 1] = -np.inf
    with pytest.raises(SpecError, match=r"'fc0.weight' contains 1 non-finite value"):
        sim.evaluate({"fc0.weight": one_inf}, good_x)
    # finite weights whose float32 sum overflows are still finite (checked value by value)
    huge = np.full((1, 3, 4), 3e38, dtype=np.float32)
    assert sim.evaluate({"fc0.weight": huge}, good_x).counts.shape == (1, 2, 3)
    with pytest.raises(SpecError, match="binary spikes"):
        TorchLIF(spec, "loihi-fixed").evaluate(None, np.full((2, 6, 4), 0.5))
    with pytest.raises(SpecError, match="precision must be one of"):
        TorchLIF(spec, "float16")


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_shared_prefixes_are_computed_once_and_give_the_same_counts(precision: str) -> None:
    # PolyStep-style batch: each set changes one tensor; the others repeat the current value.
    spec = NetworkSpec.random(
        [10, 14, 4], 16, seed=6, writable=("fc0.weight", "lif0.vth", "fc1.weight")
    )
    rng = np.random.default_rng(3)
    base = spec.parameters()
    sets = {name: np.repeat(base[name][None], 6, axis=0).copy() for name in spec.writable}
    sets["fc0.weight"][1] += rng.normal(0, 0.3, size=(14, 10)).astype(np.float32)
    sets["lif0.vth"][2] = 0.7
    sets["fc1.weight"][3] += rng.normal(0, 0.3, size=(4, 14)).astype(np.float32)
    sets["fc1.weight"][4] = sets["fc1.weight"][3]
    sim = TorchLIF(spec, precision)
    x = (np.random.default_rng(1).random((5, 16, 10)) < 0.5).astype(np.float32)
    res = sim.evaluate(sets, x, record=True)
    assert res.spikes is not None
    for j in range(6):
        one = sim.evaluate({k: v[j : j + 1] for k, v in sets.items()}, x, record=True)
        assert one.spikes is not None
        assert torch.equal(res.counts[j], one.counts[0])
        assert torch.equal(res.spikes[0][j], one.spikes[0][0])
    assert torch.equal(res.counts[3], res.counts[4])
    assert not torch.equal(res.spikes[0][0], res.spikes[0][1])
