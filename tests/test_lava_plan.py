"""Lava graph planning and the Lava env helpers: host-only, no Lava needed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from devices import lava_env
from polystep_neuro.core.errors import CapacityError, DeviceUnavailable, SpecError
from polystep_neuro.core.network import NetworkSpec
from simulators import fixed_point as fp
from simulators.lava_plan import (
    DeviceNet,
    Layout,
    block_diagonal,
    check_lava_spec,
    choose_layout,
    lava_vector,
    lava_weights,
)


def _spec(**kw) -> NetworkSpec:
    return NetworkSpec.random([6, 8, 3], 10, seed=0, **kw)


# ----------------------------------------------------------------------------- spec checks
@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"delay": 0}, "delay=0"),
        ({"reset": "subtract"}, "reset='subtract'"),
        ({"reset_delay": True}, "reset_delay=True"),
    ],
)
def test_rejects_what_lava_does_not_compute(kw: dict, words: str) -> None:
    for mode in ("fixed_pt", "floating_pt"):
        with pytest.raises(SpecError, match="Lava computes only Dense delay 1") as info:
            check_lava_spec(_spec(**kw), mode)
        assert words in str(info.value)


def test_rejects_runtime_constants_and_lists_what_is_writable() -> None:
    spec = _spec(writable=("fc1.weight", "lif0.vth", "lif1.du"))
    with pytest.raises(SpecError) as info:
        check_lava_spec(spec, "fixed_pt")
    message = str(info.value)
    assert "lif0.vth, lif1.du" in message and "fc1.weight" not in message.split(";")[0]
    assert "fc<i>.weight" in message and "fc<i>.bias" in message and "lif<i>.v_bias" in message
    # floating_pt folds thresholds into the weights, but decays stay fixed
    with pytest.raises(SpecError, match="cannot change lif1.du"):
        check_lava_spec(spec, "floating_pt")
    check_lava_spec(_spec(writable=("fc1.weight", "lif0.vth")), "floating_pt")


def test_dense_bias_needs_no_current_memory() -> None:
    with pytest.raises(SpecError, match="du = 1"):
        check_lava_spec(_spec(bias=True, du=0.5), "floating_pt")
    spec = check_lava_spec(_spec(bias=True, du=1.0), "fixed_pt")
    assert all(layer.fixed_scale is not None for layer in spec.layers)  # calibrated


def test_fixed_values_match_the_quantisers() -> None:
    spec = fp.calibrate(_spec(bias=True, du=1.0, writable=("fc0.weight", "fc0.bias")))
    net = DeviceNet(spec, "fixed_pt")
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 8, 6)).astype(np.float32)
    b = rng.normal(0, 0.3, (4, 8)).astype(np.float32)
    arrays = net.replica_arrays({"fc0.weight": w, "fc0.bias": b}, 4)
    by_what = {slot.what: a for slot, a in arrays.items()}
    layer = spec.layers[0]
    assert np.array_equal(by_what["weight"], fp.quantize_weight(w, layer))
    mant, exp = fp.quantize_bias(layer.v_bias + b, layer)
    assert np.array_equal(by_what["bias_mant"], mant) and np.array_equal(by_what["bias_exp"], exp)


def test_float_threshold_folds_into_weights() -> None:
    spec = _spec(writable=("lif1.vth",))
    net = DeviceNet(spec, "floating_pt")
    vth = np.array([spec.layers[1].vth, 2.0 * spec.layers[1].vth], dtype=np.float32)
    (weights,) = net.replica_arrays({"lif1.vth": vth}, 2).values()
    assert np.array_equal(weights[0], spec.layers[1].weight.astype(np.float64))
    assert np.allclose(weights[1], spec.layers[1].weight / 2.0)
    with pytest.raises(SpecError, match="must be > 0"):
        net.replica_arrays({"lif1.vth": np.zeros(1, np.float32)}, 1)


def test_signature_ignores_writable_values_only() -> None:
    spec = fp.calibrate(_spec(writable=("fc1.weight",)))
    net = DeviceNet(spec, "fixed_pt")
    other_readout = spec.with_params({"fc1.weight": spec.layers[1].weight * 0.5})
    assert DeviceNet(other_readout, "fixed_pt").signature() == net.signature()
    other_hidden = spec.with_params({"fc0.weight": spec.layers[0].weight * 0.5})
    assert DeviceNet(other_hidden, "fixed_pt").signature() != net.signature()


# ----------------------------------------------------------------------------- layouts
def test_layout_matrices() -> None:
    w = np.arange(2 * 3 * 2).reshape(2, 3, 2)  # R=2 sets of (3, 2)
    stacked = lava_weights(w, "stack", 2, 2)
    assert stacked.shape == (12, 4)
    assert np.array_equal(stacked[:6, :2], w.reshape(6, 2)) and not stacked[:6, 2:].any()
    assert np.array_equal(stacked[6:, 2:], w.reshape(6, 2))
    bdiag = lava_weights(w, "bdiag", 2, 1)
    assert np.array_equal(bdiag, block_diagonal(w)) and bdiag.shape == (6, 4)
    assert np.array_equal(lava_weights(w[:1], "shared", 2, 3), block_diagonal(np.stack([w[0]] * 3)))
    # neuron values: (sample, replica, neuron) order
    assert lava_vector(np.array([[1, 2], [3, 4]]), 2, 2).tolist() == [1, 2, 3, 4, 1, 2, 3, 4]
    assert lava_vector(np.array([[1, 2]]), 3, 1).tolist() == [1, 2] * 3


def test_layout_kinds_and_shapes() -> None:
    layout = Layout(replicas=4, parallel=2, first_varied=1)
    assert [layout.kind(i) for i in range(3)] == ["shared", "stack", "bdiag"]
    assert layout.matrix_shape(0, 8, 6) == (16, 12)
    assert layout.matrix_shape(1, 8, 6) == (64, 12)
    assert layout.matrix_shape(2, 8, 6) == (64, 48)


def test_cost_model_choices() -> None:
    readout = DeviceNet(NetworkSpec.random([64, 128, 10], 25, writable=("fc1.weight",)), "fixed_pt")
    layout = choose_layout(readout, 16, 32)
    assert layout.replicas == 16 and layout.parallel > 1  # samples side by side pay off
    pinned = choose_layout(readout, 16, 32, replicas=4, parallel=2)
    assert (pinned.replicas, pinned.parallel) == (4, 2)
    capped = choose_layout(readout, 64, 32, max_vertices=8)
    assert capped.replicas <= 8
    with pytest.raises(CapacityError):
        choose_layout(readout, 16, 32, max_matrix_elements=100)
    frozen = DeviceNet(NetworkSpec.random([64, 128, 10], 25), "fixed_pt")
    assert choose_layout(frozen, 16, 32).replicas == 1  # nothing varies: one copy


# ----------------------------------------------------------------------------- Lava env
def test_python310_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pyenv"
    for version in ("3.10.2", "3.10.13", "3.11.1"):
        exe = root / "versions" / version / "bin" / "python3.10"
        exe.parent.mkdir(parents=True)
        exe.write_text("")
    monkeypatch.setenv("PYENV_ROOT", str(root))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = lava_env.python310_candidates()
    assert found[:2] == [
        str(root / "versions/3.10.13/bin/python3.10"),
        str(root / "versions/3.10.2/bin/python3.10"),
    ]
    assert lava_env.python310_candidates("/my/python") == ["/my/python"]


def test_wrong_python_is_explained() -> None:
    why = lava_env.check_python310(sys.executable)
    assert why is not None and "needs Python 3.10" in why
    with pytest.raises(lava_env.LavaEnvError, match="--python /path/to/python3.10"):
        lava_env.find_python310(sys.executable)


def test_env_location_and_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lava_env.ENV_VAR, str(tmp_path / "venv"))
    assert lava_env.default_venv() == tmp_path / "venv"
    assert lava_env.find_lava_env() is None
    usable, why = lava_env.lava_env_status()
    assert not usable and "setup-lava" in why
    monkeypatch.delenv(lava_env.ENV_VAR)
    root = lava_env.project_root()
    assert root is not None and lava_env.default_venv() == root / ".venv-lava"


def test_a_venv_set_up_for_another_checkout_is_usable_and_said_out_of_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second clone pointed at the first one's Lava env runs its backends (marker and
    python are all they need), so `devices list` called it 'unavailable' wrongly; and its
    fix, setup-lava, would rewrite the env the variable names: both said."""
    import json

    venv = tmp_path / "venv"
    python = lava_env.venv_python(venv)
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    marker = {"format": lava_env.MARKER_FORMAT, "project": "/elsewhere",
              "requirements": list(lava_env.requirements(False)), "versions": {}}  # fmt: skip
    (venv / lava_env.MARKER).write_text(json.dumps(marker))
    monkeypatch.setenv(lava_env.ENV_VAR, str(venv))
    assert lava_env.find_lava_env() == venv
    usable, why = lava_env.lava_env_status()
    assert usable
    assert why.startswith(f"Lava env {venv}, out of date: it runs the project from /elsewhere, ")
    assert why.endswith(f"(it rewrites {venv}: unset {lava_env.ENV_VAR} for a venv of this "
                        "checkout's own)")  # fmt: skip


def test_backend_without_env_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devices.lava import LavaBackend

    monkeypatch.setenv(lava_env.ENV_VAR, str(tmp_path / "nothing"))
    with pytest.raises(DeviceUnavailable, match="run `polystep-neuro devices setup-lava`"):
        LavaBackend("fixed_pt")
    assert not os.path.exists(tmp_path / "nothing")
