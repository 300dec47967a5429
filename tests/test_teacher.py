"""The trained model as a teacher: soft targets that ride in the minibatch stream, a loss that
reads them, and the per-neuron calibration against its spike counts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.calibration import calibrate_neurons
from polystep_neuro.run.data import SpikeDataset
from polystep_neuro.run.losses import COUNT_LOGIT_SCALE, count_cross_entropy, distillation
from polystep_neuro.run.reference import Reference
from polystep_neuro.run.teacher import TeacherDataset, teacher_labels, teacher_loss

T = 10


def _data(n: int = 40, n_in: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, T, n_in)) < 0.35).astype(np.float32), rng.integers(0, 4, n)


def test_teacher_batches_follow_the_plain_stream_and_carry_the_counts() -> None:
    x, y = _data()
    teacher = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)
    plain = SpikeDataset(x, y, 16, seed=3)
    taught = TeacherDataset(x, y, teacher, 16, seed=3)
    for index in (0, 1, 2, 5):  # across epochs: the same endless shuffled order
        spikes, labels = plain.batch(index)
        spikes_t, targets = taught.batch(index)
        assert torch.equal(spikes, spikes_t)
        assert torch.equal(targets[:, 0].long(), labels)
        rows = [int(np.flatnonzero((x == s.numpy()).all(axis=(1, 2)))[0]) for s in spikes]
        assert torch.equal(targets[:, 1:], torch.as_tensor(teacher[rows]))
    part = taught.subset(np.array([3, 7]))
    assert torch.equal(part.teacher, torch.as_tensor(teacher[[3, 7]]))
    with pytest.raises(PolystepError, match=r"teacher counts must be \(n, classes\) for the 40"):
        TeacherDataset(x, y, teacher[:5], 16)
    assert list(teacher_labels(np.array([[0, 3, 1], [2, 0, 0]]))) == [1, 0]


def test_teacher_loss_is_labels_plus_soft_targets_and_plain_on_labels() -> None:
    counts = torch.tensor([[[4.0, 1, 0, 2], [0, 5, 1, 1]], [[1.0, 1, 1, 1], [2, 2, 0, 0]]])
    labels = torch.tensor([0, 1])
    teacher = torch.tensor([[6.0, 0, 0, 1], [0, 7, 0, 0]])
    targets = torch.cat([labels[:, None].float(), teacher], dim=1)
    ce = count_cross_entropy(counts, labels, COUNT_LOGIT_SCALE)
    soft = distillation(counts, teacher)
    torch.testing.assert_close(teacher_loss(2.0)(counts, targets), ce + 2.0 * soft)
    torch.testing.assert_close(teacher_loss(1.0, 0.0)(counts, targets), soft)
    torch.testing.assert_close(teacher_loss(2.0)(counts, labels), ce)  # validation and test
    assert bool(teacher_loss()(counts, targets)[0] < teacher_loss()(counts, targets)[1])
    with pytest.raises(PolystepError, match="not both 0"):
        teacher_loss(0.0, 0.0)


def test_calibration_brings_every_layer_closer_to_the_teacher() -> None:
    """A network whose device copy fires too little (a wrong threshold in every layer): the
    per-neuron gains and offsets found on the device bring the spike counts of every layer
    far closer to the trained network's, in one device call per layer."""
    from devices.registry import open_backend

    trained = NetworkSpec.random([12, 16, 4], T, seed=2, dv=0.1, weight_gain=3.0, delay=1)
    layers = [type(layer)(**{**layer.__dict__, "vth": layer.vth * 1.4}) for layer in trained.layers]
    deployed = NetworkSpec(layers, T, ("fc0.weight", "lif0.v_bias"))
    x, _ = _data()
    teacher = Reference(trained, "trained").spikes(x)
    with open_backend("torch-sim-fixed", device="cpu") as backend:
        calibrated, report, sets = calibrate_neurons(backend, deployed, torch.as_tensor(x), teacher)
    assert sets == 2 * 169  # 13 gains x 13 offsets per layer, 40 samples in one minibatch
    for row in report:
        assert row.error_after < 0.5 * row.error_before, row
    assert calibrated.writable == deployed.writable
    got = Reference(calibrated, "calibrated").spikes(x)
    for k in range(2):
        before = np.mean((Reference(deployed, "d").spikes(x)[k].sum(1) - teacher[k].sum(1)) ** 2)
        after = np.mean((got[k].sum(1).astype(float) - teacher[k].sum(1)) ** 2)
        assert after < 0.6 * before


def test_a_teacher_takes_the_anchors_place_in_a_run() -> None:
    """`pn.adapt(teacher=...)` / `adapt --teacher`: the stream carries the trained model's
    counts over the steps the device network answers to (its extra delay), and the loop's
    loss reads them instead of anchoring to the start."""
    from dataclasses import dataclass, field

    from polystep_neuro.run.loop_options import Regularization
    from polystep_neuro.run.run_defaults import RunConfig
    from polystep_neuro.run.teacher import taught

    @dataclass
    class Data:  # the fields of recipe.RunData that taught() reads and replaces
        stream: SpikeDataset
        has_clean: bool = False
        validation: dict = field(default_factory=dict)

    @dataclass
    class Loop:
        loss: object = None
        regularization: Regularization = field(default_factory=lambda: Regularization(2.0))

    trained = NetworkSpec.random([12, 16, 4], T, seed=2, dv=0.1, weight_gain=3.0, delay=0)
    device = NetworkSpec([replace(layer, delay=1) for layer in trained.layers], T)
    x, y = _data()
    data, on_ready = taught(trained, Data(SpikeDataset(x, y, 16)), device, RunConfig())
    want = Reference(trained, "t").spikes(x)[-1][:, : T - 2].sum(axis=1)  # two layers late
    np.testing.assert_array_equal(data.stream.teacher.numpy(), want)
    loop = Loop()
    on_ready(loop, None, 2.0)
    assert loop.regularization.anchor_weight == 0.0  # no start riding along
    counts = torch.as_tensor(want, dtype=torch.float32)[None]
    targets = torch.cat([torch.as_tensor(y, dtype=torch.float32)[:, None], counts[0]], dim=1)
    expected = teacher_loss(2.0)(counts, targets)  # drifted data only: the anchor's weight
    torch.testing.assert_close(loop.loss(counts, targets), expected)


def test_the_adapt_command_says_a_teacher_anchors_the_run(tmp_path, capsys) -> None:
    """With --teacher the start does not ride along (on_ready sets its weight to 0): the
    log line names the teacher as the anchor, with the weight its soft targets get."""
    from polystep_neuro.cli import main

    spec = NetworkSpec.random([12, 16, 4], T, seed=2, dv=0.1, weight_gain=3.0)
    spec.save(tmp_path / "net.npz")
    spec.save(tmp_path / "teacher.npz")
    x, y = _data(60)
    np.savez(tmp_path / "data.npz", spikes=x, labels=y)
    for extra, weight in (([], 2), (["--replay", str(tmp_path / "data.npz")], 1)):
        code = main([
            "adapt", "--spec", str(tmp_path / "net.npz"), "--data", str(tmp_path / "data.npz"),
            "--teacher", str(tmp_path / "teacher.npz"), "--backend", "torch-sim", "--steps",
            "2", "--rank", "4", "--torch-device", "cpu", "--out", str(tmp_path / "run"),
            "--no-progress", *extra,
        ])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0
        assert (
            f"; anchored to the outputs of the teacher {tmp_path / 'teacher.npz'} (the trained "
            f"model), not to the starting network (weight {weight})"
        ) in out
        assert "anchored to the starting network" not in out
        note = (
            "; note: on drifted data alone a teacher cost 2.9-5.2 clean points on the networks "
            "measured, the starting network as the anchor (no teacher) under 1"
        )
        assert (note in out) == (not extra)  # said for drifted data alone, not with replay


def test_pn_adapt_says_what_a_teacher_costs_on_drifted_data_alone(capsys) -> None:
    """The command's line says it; so does the API, where the README's recipe passed a
    teacher on drifted data and a user lost 4.9 clean points (said only without replay)."""
    import polystep_neuro as pn

    spec = NetworkSpec.random([12, 16, 4], T, seed=2, dv=0.1, weight_gain=3.0)
    x, y = _data(60)
    for replay in (None, (x, y)):
        pn.adapt(spec, "torch-sim", train=(x, y), replay=replay, teacher=spec, steps=2,
                 rank=4, torch_device="cpu")  # fmt: skip
        said = capsys.readouterr().out
        note = (
            "teacher: note: on drifted data alone a teacher cost 2.9-5.2 clean points on the "
            "networks measured, the starting network as the anchor (no teacher) under 1"
        )
        assert (note in said) == (replay is None)
