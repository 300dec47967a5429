"""netx export: the file holds the calibrated integers in netx's layout, what netx cannot
represent is refused by name, and lava-dl's netx loader runs the file on Lava's CPU simulator
with spike counts identical to the lava-fixed backend and torch-sim-fixed.

The Lava part needs the Lava env with lava-dl (``polystep-neuro devices setup-lava
--with-lava-dl``); without it that test skips, unless POLYSTEP_REQUIRE_LAVA=1 (CI), where a
missing env or a missing lava-dl is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from devices.lava_env import find_lava_env, lava_dl_installed, venv_python
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point as fp
from simulators.torch_lif import TorchLIF

h5py = pytest.importorskip("h5py")
from polystep_neuro.run.interop.netx import (  # noqa: E402
    calibrate_for_netx,
    netx_layers,
    round_biases_for_netx,
    write_netx,
)

ROOT = Path(__file__).resolve().parents[1]
T = 20


def _device_spec() -> NetworkSpec:
    """Three layers that netx represents exactly, one per weight-exponent case (0, -1, +1),
    with current memory, a leaky layer and biases on the 64-unit grid netx stores."""
    rng = np.random.default_rng(21)
    w0 = rng.normal(0.15, 0.5, (24, 16))
    w1 = rng.normal(0.0, 0.5, (12, 24))
    w2 = rng.normal(0.0, 0.5, (5, 12))
    m1 = float(np.abs(w1).max())
    m2 = float(np.abs(w2).max())
    layers = [
        LayerSpec(weight=w0, du=0.3, dv=0.1, vth=1.0),
        # exponent -1: the device floors (W·s) / 2, exact for even W
        LayerSpec(weight=w1, du=1.0, dv=0.05, vth=1.2, neuron="leaky",
                  fixed_scale=127.0 / m1, fixed_weight_exp=-1),
        # exponent +1 with weights that fit 8 bits after the shift
        LayerSpec(weight=w2, du=0.6, dv=0.2, vth=0.9,
                  fixed_scale=240.0 / m2, fixed_weight_exp=1),
    ]  # fmt: skip
    spec = calibrate_for_netx(NetworkSpec(layers, T))
    scale0 = spec.layers[0].fixed_scale
    scale2 = spec.layers[2].fixed_scale
    assert scale0 is not None and scale2 is not None
    # v_bias on netx's grid: multiples of 64 device units = 1 / fixed_scale float units
    v0 = rng.integers(-4, 5, 24) / scale0
    v2 = rng.integers(-3, 6, 5) / scale2
    return spec.with_params({"lif0.v_bias": v0, "lif2.v_bias": v2})


def _inputs(n_in: int, batch: int = 6, density: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (rng.random((batch, T, n_in)) < density).astype(np.float32)


# ----------------------------------------------------------------------------- the file
def test_file_layout_holds_the_device_integers(tmp_path: Path) -> None:
    spec = _device_spec()
    path = tmp_path / "net.h5"
    write_netx(spec, path)
    fixed = fp.quantize_spec(spec)
    assert [f.weight_exp for f in fixed] == [0, -1, 1]
    with h5py.File(path, "r") as f:
        assert sorted(f["layer"].keys()) == ["0", "1", "2", "3"]
        assert f["layer/0/type"][0] == b"input"
        assert f["layer/0/shape"][()].tolist() == [16]
        assert "neuron" not in f["layer/0"]
        for i, layer in enumerate(fixed, start=1):
            g = f[f"layer/{i}"]
            assert g["type"][0] == b"dense"
            assert g["shape"][()].tolist() == [layer.weight.shape[0]]
            shift = layer.weight_exp
            want = layer.weight << shift if shift >= 0 else layer.weight >> -shift
            np.testing.assert_array_equal(g["weight"][()], want)
            assert g["neuron/type"][0] == b"CUBA"
            assert int(g["neuron/iDecay"][()]) == layer.du + 1
            assert int(g["neuron/vDecay"][()]) == layer.dv
            assert int(g["neuron/vThMant"][()]) == layer.vth
            total = layer.bias_mant.astype(np.int64) << layer.bias_exp
            if np.any(total):
                np.testing.assert_array_equal(g["bias"][()] * 64, total)
            else:
                assert "bias" not in g
    assert fixed[0].du == round(0.3 * 4096) - 1 and fixed[1].du == 4095
    netx = netx_layers(spec)
    assert [layer.i_decay for layer in netx] == [1229, 4096, 2458]
    assert np.any(netx[0].bias) and np.any(netx[2].bias) and not np.any(netx[1].bias)


def test_calibrate_for_netx_uses_exponent_zero_and_keeps_set_calibrations() -> None:
    spec = NetworkSpec.random([10, 8, 3], T, seed=3, du=0.5, dv=0.1)
    default = fp.calibrate(spec)
    assert [layer.fixed_weight_exp for layer in default.layers] != [0, 0]
    netx = calibrate_for_netx(spec)
    assert [layer.fixed_weight_exp for layer in netx.layers] == [0, 0]
    for layer in netx.layers:
        assert int(np.abs(fp.quantize_weight(layer.weight, layer)).max()) == fp.WEIGHT_MAX
    assert calibrate_for_netx(default).layers[0].fixed_scale == default.layers[0].fixed_scale


def _refused(spec: NetworkSpec, match: str, tmp_path: Path) -> None:
    path = tmp_path / "refused.h5"
    with pytest.raises(SpecError, match=match) as info:
        write_netx(spec, path)
    assert "\n" not in str(info.value)
    assert not path.exists()


def test_what_netx_cannot_represent_is_refused(tmp_path: Path) -> None:
    spec = NetworkSpec.random([10, 8, 3], T, seed=3, du=0.5, dv=0.1)
    default = fp.calibrate(spec)
    exp0 = default.layers[0].fixed_weight_exp
    _refused(
        default,
        rf"layer 0: calibrated with weight exponent {exp0}, the device weights reach .* netx "
        r"stores exponent-0 weights in \[-256, 254\] .*recalibrate: export --recalibrate \(Python: "
        r"interop.netx.calibrate_for_netx; a network calibrated by deploy usually needs "
        r"--round-biases too\)",
        tmp_path,
    )
    good = calibrate_for_netx(spec)
    off_grid = good.with_params({"lif1.v_bias": np.full(3, 0.3 / good.layers[1].fixed_scale)})
    _refused(
        off_grid, r"layer 1: neuron 0's bias is 19 device units, but netx fixes bias_exp", tmp_path
    )
    _refused(
        NetworkSpec([replace(layer, delay=0) for layer in good.layers], T),
        r"layer 0: delay=0; netx builds Lava Dense layers",
        tmp_path,
    )
    _refused(
        NetworkSpec([replace(layer, reset="subtract") for layer in good.layers], T),
        r"layer 0: Loihi 2 neurons reset to zero",
        tmp_path,
    )
    odd = replace(
        good.layers[0], fixed_weight_exp=-2, fixed_scale=good.layers[0].fixed_scale * 0.25
    )
    _refused(
        NetworkSpec([odd, good.layers[1]], T),
        r"layer 0: calibrated with weight exponent -2, .*not all multiples of 4",
        tmp_path,
    )
    zero = replace(good.layers[1], weight=np.zeros((3, 8), np.float32))
    _refused(
        NetworkSpec([good.layers[0], zero], T), "layer 1: every weight quantises to 0", tmp_path
    )
    _refused(good, r"cannot write .*missing", Path("/nonexistent/missing"))


def test_biases_off_netx_grid_are_rounded_on_request_and_the_change_is_reported(
    tmp_path: Path, capsys
) -> None:
    """A network adapted or converted with ordinary biases was refused by netx export with
    no way out from the command line: --round-biases rounds each bias to the nearest
    multiple of 64 device units, says by how much (a share of the threshold), and saves
    the network the file holds."""
    from polystep_neuro.cli import main

    spec = calibrate_for_netx(NetworkSpec.random([10, 8, 3], T, seed=3, du=0.5, dv=0.1))
    rng = np.random.default_rng(0)
    biased = spec.with_params({"lif0.v_bias": rng.normal(0, 0.05, 8), "lif1.v_bias":
                               rng.normal(0, 0.05, 3)})  # fmt: skip
    rounded, changes = round_biases_for_netx(biased)
    before, after = fp.quantize_spec(biased), fp.quantize_spec(rounded)
    for old, new, change in zip(before, after, changes, strict=True):
        total = old.bias_mant.astype(np.int64) << old.bias_exp.astype(np.int64)
        moved = new.bias_mant.astype(np.int64) << new.bias_exp.astype(np.int64)
        np.testing.assert_array_equal(moved, np.round(total / 64).astype(np.int64) * 64)
        assert change == np.abs(moved - total).max() / (old.vth << fp.ACT_SHIFT)
        assert 0 < change <= 32 / (old.vth << fp.ACT_SHIFT)
        np.testing.assert_array_equal(new.weight, old.weight)
    write_netx(rounded, tmp_path / "ok.h5")  # what was refused now writes
    biased.save(tmp_path / "adapted.npz")
    args = ["export", "--spec", str(tmp_path / "adapted.npz"), "--to", "netx", "--out"]
    assert main([*args, str(tmp_path / "x.net")]) == 2
    assert "`polystep-neuro export --round-biases`" in capsys.readouterr().err
    unfit = tmp_path / "unfit.npz"  # weights netx cannot hold: refused, and nothing written
    replace(
        biased, layers=[replace(biased.layers[0], fixed_weight_exp=5), *biased.layers[1:]]
    ).save(unfit)
    assert main(["export", "--spec", str(unfit), "--to", "netx", "--round-biases", "--out",
                 str(tmp_path / "y.net")]) == 2  # fmt: skip
    assert not (tmp_path / "y.net.npz").exists() and not (tmp_path / "y.net").exists()
    assert "biases rounded" not in capsys.readouterr().out  # no note of a file not written
    assert main([*args, str(tmp_path / "x.net"), "--round-biases"]) == 0
    out = capsys.readouterr().out
    assert f"layer 0 {changes[0]:.2%}, layer 1 {changes[1]:.2%}" in out
    held = NetworkSpec.load(tmp_path / "x.net.npz")
    for name, value in rounded.parameters().items():
        np.testing.assert_array_equal(held.parameters()[name], value)


def test_the_rounded_side_file_keeps_the_readout_of_output_copies(tmp_path: Path, capsys) -> None:
    """A deployed network with output copies is written to netx with every copy a neuron of
    its own (no file format sums them); the network saved beside it for ``evaluate`` must
    still count each class over its copies, or it scores its 2 x n outputs against n labels
    (a user's export read 0 % there)."""
    from polystep_neuro.cli import main
    from polystep_neuro.run.output_copies import with_output_copies

    spec = calibrate_for_netx(NetworkSpec.random([10, 8, 3], T, seed=3, du=0.5, dv=0.1))
    copied = with_output_copies(spec)
    copied.save(tmp_path / "deployed.npz")
    out = tmp_path / "x.net"
    assert main(["export", "--spec", str(tmp_path / "deployed.npz"), "--to", "netx",
                 "--recalibrate", "--round-biases", "--out", str(out)]) == 0  # fmt: skip
    assert "counts each class over 2 output neurons" in capsys.readouterr().out
    held = NetworkSpec.load(tmp_path / "x.net.npz")
    assert (held.output_copies, held.n_classes, held.n_out) == (2, 3, 6)


# ----------------------------------------------------------------------------- in Lava
def _lava_dl_env() -> Path:
    venv = find_lava_env()
    problem = None
    if venv is None:
        problem = "no Lava env: run `polystep-neuro devices setup-lava --with-lava-dl`"
    elif not lava_dl_installed(venv):
        problem = (
            f"the Lava env {venv} has no lava-dl: run `polystep-neuro devices setup-lava "
            f"--with-lava-dl`"
        )
    if problem is not None:
        if os.environ.get("POLYSTEP_REQUIRE_LAVA") == "1":
            pytest.fail(f"POLYSTEP_REQUIRE_LAVA=1 but {problem}")
        pytest.skip(problem)
    assert venv is not None
    return venv


def test_netx_runs_the_file_like_lava_fixed_and_torch_sim_fixed(tmp_path: Path) -> None:
    venv = _lava_dl_env()
    from devices.lava import LavaBackend

    spec = _device_spec()
    x = _inputs(spec.n_in)
    path = tmp_path / "net.h5"
    write_netx(spec, path)
    np.save(tmp_path / "inputs.npy", x)
    out = subprocess.run(
        [
            str(venv_python(venv)),
            "-m",
            "tests.netx_env_checks",
            str(path),
            str(tmp_path / "inputs.npy"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    netx_counts = np.array(result["counts"])
    torch_counts = TorchLIF(spec, "loihi-fixed").counts({}, x)[0].numpy()
    backend = LavaBackend("fixed_pt")
    try:
        backend.load(spec)
        lava_counts = backend.evaluate({}, x)[0]
    finally:
        backend.close()
    print(
        f"netx: {netx_counts.sum()} output spikes in {result['seconds']:.1f} s\n{result['table']}"
    )
    assert netx_counts.shape == (6, 5)
    assert np.array_equal(lava_counts, torch_counts)
    assert np.array_equal(netx_counts, lava_counts), (
        f"netx {netx_counts} vs lava-fixed {lava_counts}"
    )
    assert netx_counts.sum() > 200 and len(np.unique(netx_counts)) > 8  # real, varied activity


def test_a_netx_file_given_as_a_model_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A SLAYER user's netx file given where a NIR graph or a spec is read: one line saying
    netx is written, not read (it was "object 'node' doesn't exist", and advice to run
    convert --nir, which cannot read it)."""
    from polystep_neuro.run.interop.nir import from_nir

    path = tmp_path / "slayer.net"
    write_netx(calibrate_for_netx(_device_spec()), path)
    said = r"slayer.net is a lava-dl netx network: polystep-neuro writes netx files \(export"
    with pytest.raises(SpecError, match=said + r" --to netx\) but does not read them"):
        NetworkSpec.load(path)
    with pytest.raises(SpecError, match=r"slayer.net is a lava-dl netx network, not a NIR graph"):
        from_nir(path, T)
