"""The corruption suite: deterministic for a seed, in range, harsher with severity, and each
sensor fault doing what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.corruptions import (
    CORRUPTIONS,
    IMAGE_CORRUPTIONS,
    SENSOR_FAULTS,
    Corruption,
)
from polystep_neuro.run.data import encode, load_split

pytest.importorskip("skimage")  # canny_edges; part of the dev extra


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("digits", 0).x_test[:60]


def _changed(corruption: Corruption, x: np.ndarray, spikes: np.ndarray) -> float:
    if corruption.on_spikes:
        return float(np.abs(corruption.spikes(spikes).astype(float) - spikes).mean())
    return float(np.abs(corruption.images(x) - x).mean())


def test_the_suite_holds_mnist_c_and_the_sensor_faults() -> None:
    assert len(IMAGE_CORRUPTIONS) == 15 and len(SENSOR_FAULTS) == 5
    assert set(CORRUPTIONS) >= {"shot_noise", "glass_blur", "canny_edges", "timing_jitter"}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_deterministic_in_range_and_harsher_with_severity(
    name: str, digits: np.ndarray
) -> None:
    spikes = encode(digits, 16)
    first = Corruption(name, 3, seed=4)
    again = Corruption(name, 3, seed=4)
    if first.on_spikes:
        out = first.spikes(spikes)
        assert out.shape == spikes.shape and out.dtype == spikes.dtype
        assert set(np.unique(out)) <= {0, 1}
        np.testing.assert_array_equal(out, again.spikes(spikes))
        np.testing.assert_array_equal(first.images(digits), digits)  # the other call passes
    else:
        out = first.images(digits)
        assert out.shape == digits.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, again.images(digits))
        np.testing.assert_array_equal(first.spikes(spikes), spikes)
    mild, harsh = (_changed(Corruption(name, s, 4), digits, spikes) for s in (1, 5))
    assert 0 < mild < harsh, (mild, harsh)


def test_another_seed_draws_another_corruption(digits: np.ndarray) -> None:
    a = Corruption("rotate", 3, seed=0).images(digits)
    b = Corruption("rotate", 3, seed=1).images(digits)
    assert np.abs(a - b).mean() > 0.01


def test_dead_channels_are_the_same_channels_for_every_sample_and_step(digits: np.ndarray) -> None:
    spikes = np.ones((30, 16, 64), dtype=np.uint8)
    out = Corruption("dead_channels", 3, seed=2).spikes(spikes)
    dead = out[0, 0] == 0
    assert dead.sum() == round(0.2 * 64)  # severity 3: a fifth of the channels
    assert np.all(out[:, :, dead] == 0) and np.all(out[:, :, ~dead] == 1)
    other = Corruption("dead_channels", 3, seed=3).spikes(spikes)[0, 0] == 0
    assert not np.array_equal(dead, other)


def test_hot_channels_fire_at_half_the_steps_whatever_they_see(digits: np.ndarray) -> None:
    spikes = np.zeros((200, 20, 64), dtype=np.uint8)
    out = Corruption("hot_channels", 5, seed=0).spikes(spikes)
    hot = out.sum(axis=(0, 1)) > 0
    assert hot.sum() == round(0.15 * 64)
    assert abs(out[:, :, hot].mean() - 0.5) < 0.02


def test_background_noise_only_adds_and_jitter_only_moves_spikes(digits: np.ndarray) -> None:
    spikes = encode(digits, 16)
    noisy = Corruption("background_noise", 3, seed=0).spikes(spikes)
    assert np.all(noisy >= spikes)
    assert abs(noisy[spikes == 0].mean() - 0.04) < 0.005  # severity 3: 4 % per step
    jittered = Corruption("timing_jitter", 3, seed=0).spikes(spikes)
    per_input = spikes.sum(axis=1)
    moved = jittered.sum(axis=1)
    assert np.all(moved <= per_input) and np.all((moved > 0) == (per_input > 0))
    assert not np.array_equal(jittered, spikes)


def test_bad_names_severities_and_shapes_are_one_clear_error(digits: np.ndarray) -> None:
    with pytest.raises(PolystepError, match="unknown corruption 'blurr'; choose one of shot_noise"):
        Corruption("blurr")
    with pytest.raises(PolystepError, match="severity must be 1 to 5, got 0"):
        Corruption("fog", 0)
    with pytest.raises(PolystepError, match="63 features are not a square"):
        Corruption("fog").images(digits[:, :63])
    with pytest.raises(PolystepError, match=r"spike trains must be \(n, T, N\)"):
        Corruption("dead_channels").spikes(digits)


def test_adapt_on_built_in_data_takes_a_corruption(tmp_path) -> None:
    from polystep_neuro.cli import main
    from polystep_neuro.core.network import NetworkSpec

    spec = NetworkSpec.random([64, 16, 10], 8, seed=0, writable=("fc1.weight",))
    spec.save(tmp_path / "net.npz")
    args = ["adapt", "--spec", str(tmp_path / "net.npz"), "--steps", "2", "--rank", "4",
            "--torch-device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--corruption", "rotate", "--severity", "2"]) == 0
    config = (tmp_path / "run" / "config.json").read_text()
    assert '"corruption": "rotate"' in config and '"severity": 2' in config


def test_a_corruption_and_the_shift_flags_together_are_refused(tmp_path, capsys) -> None:
    from polystep_neuro.cli import main
    from polystep_neuro.core.network import NetworkSpec

    NetworkSpec.random([64, 16, 10], 8, seed=0, writable=("fc1.weight",)).save(tmp_path / "n.npz")
    code = main(
        [
            "adapt",
            "--spec",
            str(tmp_path / "n.npz"),
            "--corruption",
            "fog",
            "--shift-gain",
            "0.5",
            "--torch-device",
            "cpu",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "give either --corruption or the --shift-* flags, not both" in capsys.readouterr().err


def test_the_demo_data_takes_a_corruption_as_its_shift() -> None:
    import torch

    from polystep_neuro.run.demo import DemoConfig, load_data

    cfg = DemoConfig.quick(shift=Corruption("dead_channels", 4, seed=1), time_steps=8)
    data = load_data(cfg, torch.device("cpu"))
    clean, shifted = data.test["clean"].spikes, data.test["shifted"].spikes
    dead = shifted.sum(dim=(0, 1)) == 0
    assert dead.sum() >= round(0.3 * 64)  # severity 4: at least 30 % of the inputs silent
    assert torch.equal(shifted[:, :, ~dead], clean[:, :, ~dead])
