"""A device server that dies mid-adaptation costs retries, never a step: the client
reconnects, re-loads the spec, retries the step, and the run ends bit-identical."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from devices.remote import RemoteBackend
from devices.spawn import ServerProcess
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.data import SpikeDataset, poisson_encode
from polystep_neuro.run.loop_options import Output
from polystep_neuro.run.losses import make_loss
from polystep_neuro.run.params import ParamVector
from tests._servers import ThreadServer, spawn

T = 8
STEPS = 30
KILL_AT = 10


@pytest.fixture(scope="module")
def train() -> SpikeDataset:
    """Synthetic spikes (no sklearn import: seconds count on a shared 2-core box)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=256)
    intensity = rng.random((256, 64)) * 0.3
    intensity[np.arange(256)[:, None], labels[:, None] * 6 + np.arange(6)] += 0.6
    return SpikeDataset(poisson_encode(intensity, T, seed=1), labels, 32, seed=0)


def _adapt(backend: RemoteBackend, train: SpikeDataset, on_step: Any = None) -> AdaptResult:
    spec = NetworkSpec.random([64, 16, 10], T, seed=0, writable=("fc1.weight", "lif0.vth"))
    backend.load(spec)
    layout = ParamVector(spec)
    optimizer = PolyStep(
        layout.flatten(spec),
        step_radius=0.5,
        probe_radius=1.0,
        epsilon=0.3,
        seed=3,
        subspace=Subspace(sizes=layout.sizes, rank=16, absorb_interval=4),
        momentum=0.5,
    )
    adapter = Adapter(
        backend.spec,
        backend,
        optimizer,
        make_loss("ce", T, scale=0.5),
        train,
        output=Output(progress=False),
        on_step=on_step,
    )
    return adapter.run(STEPS)


def test_adaptation_survives_a_killed_and_restarted_server(
    train: SpikeDataset, caplog: pytest.LogCaptureFixture
) -> None:
    first = spawn("torch-sim")
    restarted: list[ServerProcess] = []
    try:
        with RemoteBackend(first.endpoint, timeout_s=30) as calm:
            reference = _adapt(calm, train)
        assert reference.steps == STEPS

        def restart() -> None:
            time.sleep(0.3)
            restarted.append(spawn("torch-sim", bind=first.endpoint))

        restarter = threading.Thread(target=restart)

        def kill_mid_run(adapter: Adapter, record: dict[str, Any]) -> None:
            if record["step"] == KILL_AT:
                first.process.kill()  # SIGKILL: no goodbye, the network is lost
                first.process.wait(10)
                restarter.start()

        # short tries, many of them: the restarted server needs a few seconds to import torch
        remote = RemoteBackend(first.endpoint, timeout_s=0.5, connect_timeout_s=0.5, retries=120)
        with remote, caplog.at_level(logging.WARNING, logger="devices.remote"):
            start = time.monotonic()
            disturbed = _adapt(remote, train, on_step=kill_mid_run)
            elapsed = time.monotonic() - start
        restarter.join(60)
        assert restarted and restarted[0].endpoint == first.endpoint
        assert restarted[0].process.pid != first.process.pid
        assert disturbed.steps == STEPS and not disturbed.interrupted
        assert [r["step"] for r in disturbed.history] == list(range(0, STEPS + 1))
        assert "no reply from" in caplog.text
        assert "re-loading the network and retrying (handled, the run goes on)" in caplog.text
        for got, want in zip(disturbed.spec.layers, reference.spec.layers, strict=True):
            assert np.array_equal(got.weight, want.weight)
            assert np.array_equal(got.vth, want.vth)
        assert disturbed.evaluations == reference.evaluations
        losses = [r["loss_min"] for r in disturbed.history[1:]]
        assert losses == [r["loss_min"] for r in reference.history[1:]]
        print(f"disturbed run: {elapsed:.1f} s for {STEPS} steps including the restart")
    finally:
        for proc in (first, *restarted):
            proc.stop()


def test_heartbeat_reloads_a_restarted_server_before_the_evaluate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With heartbeat_s, a quiet client pings first: the big evaluate request is never sent
    to a dead server, and a restarted one is re-loaded before it (no NotLoaded round trip)."""
    spec = NetworkSpec.random([8, 12, 3], 10, seed=4, writable=("fc0.weight",))
    rng = np.random.default_rng(0)
    params = {"fc0.weight": rng.normal(0, 0.8, size=(6, 12, 8)).astype(np.float32)}
    inputs = torch.as_tensor((rng.random((4, 10, 8)) < 0.5).astype(np.float32))
    server = ThreadServer("torch-sim")
    replacement: list[ThreadServer] = []
    remote = RemoteBackend(
        server.endpoint, heartbeat_s=0.2, timeout_s=0.5, connect_timeout_s=0.3, retries=60
    )
    pings = []
    real_ping = remote._ping
    remote._ping = lambda tries=None: pings.append(tries) or real_ping(tries)  # type: ignore
    try:
        remote.load(spec)
        before = remote.evaluate(params, inputs)
        assert before.sum() > 0 and pings == []  # busy: no heartbeat needed
        server.stop()  # the server goes away while the client is idle ...
        time.sleep(0.3)
        later = threading.Timer(
            0.5, lambda: replacement.append(ThreadServer("torch-sim", bind=server.endpoint))
        )
        later.start()  # ... and a fresh one (holding no network) takes its port
        with caplog.at_level(logging.WARNING, logger="devices.remote"):
            after = remote.evaluate(params, inputs)
        later.join()
        np.testing.assert_array_equal(after, before)
        assert len(pings) == 1
        assert "to ping within" in caplog.text and "to evaluate" not in caplog.text
        assert "re-loading" in caplog.text
        assert "re-loading the network and retrying" not in caplog.text
    finally:
        remote.close()
        for extra in replacement:
            extra.stop()
