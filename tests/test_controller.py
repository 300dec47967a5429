"""The adaptation loop: progress log, checkpoints, bit-identical resume, Ctrl-C."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from devices.registry import open_backend
from polystep_neuro.controller import CHECKPOINT_NAME, METRICS_NAME, SPEC_NAME, Adapter
from polystep_neuro.data import SpikeDataset, load_digits_split, rate_encode
from polystep_neuro.errors import PolystepError
from polystep_neuro.losses import make_loss
from polystep_neuro.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.params import ParamVector

T = 12


@pytest.fixture(scope="module")
def data() -> tuple[SpikeDataset, SpikeDataset]:
    split = load_digits_split(0)
    train = SpikeDataset(rate_encode(split.x_train[:400], T), split.y_train[:400], 64, seed=0)
    test = SpikeDataset(rate_encode(split.x_test[:100], T), split.y_test[:100], 100)
    return train, test


def _adapter(data, out_dir, precision="float32", **kw) -> Adapter:
    spec = NetworkSpec.random([64, 32, 10], T, seed=0, writable=("fc1.weight", "lif0.vth"))
    backend = open_backend(
        "torch-sim" if precision == "float32" else "torch-sim-fixed", device="cpu"
    )
    backend.load(spec)
    layout = ParamVector(spec)
    opt = PolyStep(
        layout.flatten(spec),
        step_radius=0.5,
        probe_radius=1.0,
        epsilon=0.3,
        seed=3,
        subspace=Subspace(sizes=layout.sizes, rank=32, absorb_interval=4),
        momentum=0.5,
    )
    return Adapter(
        backend.spec,
        backend,
        opt,
        make_loss("ce", T, scale=0.5),
        data[0],
        out_dir=out_dir,
        monitor=data[1],
        checkpoint_every=3,
        eval_every=2,
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("precision", ["float32", "loihi-fixed"])
def test_interrupt_and_resume_is_bit_identical(data, tmp_path, precision) -> None:
    whole = _adapter(data, tmp_path / "whole", precision)
    ref = whole.run(10)
    assert not ref.interrupted and ref.steps == 10

    def stop_at_4(adapter: Adapter, record: dict) -> None:
        if record["step"] == 4:
            adapter.request_stop()

    first = _adapter(data, tmp_path / "split", precision, on_step=stop_at_4)
    part = first.run(10)
    assert part.interrupted and part.steps == 4
    assert (tmp_path / "split" / CHECKPOINT_NAME).exists()

    second = _adapter(data, tmp_path / "split", precision)  # a fresh optimiser and backend
    assert second.resume() == 4
    final = second.run(10)
    # The resumed run reports the stage's whole wall time, the interrupted part included.
    assert final.wall_seconds >= part.wall_seconds > 0
    assert np.array_equal(final.spec.layers[1].weight, ref.spec.layers[1].weight)
    assert torch.equal(second.optimizer.x, whole.optimizer.x)
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "split" / METRICS_NAME).read_text().splitlines()
    ]
    assert steps == list(range(1, 11))  # no duplicates, no gaps
    saved = NetworkSpec.load(tmp_path / "split" / SPEC_NAME)
    assert np.array_equal(saved.layers[1].weight, ref.spec.layers[1].weight)
    assert saved.layers[0].vth == ref.spec.layers[0].vth


def test_resume_from_an_older_checkpoint_drops_later_log_lines(data, tmp_path) -> None:
    adapter = _adapter(data, tmp_path)
    adapter.run(6)  # checkpoints at 3 and 6
    log = tmp_path / METRICS_NAME
    assert len(log.read_text().splitlines()) == 6
    adapter.checkpoint_every = 0
    fresh = _adapter(data, tmp_path)
    assert fresh.resume() == 6
    fresh.run(8)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 9))


def test_metrics_and_learning(data, tmp_path) -> None:
    adapter = _adapter(data, tmp_path)
    result = adapter.run(60)
    first, last = result.history[1], result.history[-1]
    # measured: monitor loss 2.2 -> 1.6, accuracy 10% -> 45% (10 classes: chance is 10%)
    assert last["monitor_loss"] < first["monitor_loss"] - 0.3
    assert last["monitor_accuracy"] > 0.3
    assert result.evaluations == sum(r["candidates"] for r in result.history) * 64
    assert {"loss_min", "loss_mean", "step_seconds", "evaluations"} <= set(last)


def test_bad_setups_fail_with_messages(data, tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(PolystepError, match="not writable"):
        _adapter(data, blocked / "sub")
    adapter = _adapter(data, tmp_path / "a")
    with pytest.raises(PolystepError, match="no checkpoint to resume from"):
        adapter.resume()
    (tmp_path / "a" / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(PolystepError, match="cannot read checkpoint"):
        adapter.resume()
