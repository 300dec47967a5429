"""The defaults of a run, written once, and how strongly a run is anchored to its start."""

from __future__ import annotations

import polystep_neuro as pn
from polystep_neuro.run.adapt_job import AdaptJob
from polystep_neuro.run.demo import DemoConfig
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.run_defaults import DRIFTED_ONLY_ANCHOR, RunConfig, anchor_weight


def test_without_clean_data_the_run_is_anchored_and_an_explicit_anchor_wins() -> None:
    assert anchor_weight(has_clean=False) == DRIFTED_ONLY_ANCHOR == 2.0
    assert anchor_weight(has_clean=True) == 0.0
    assert anchor_weight(has_clean=False, anchor=0.5) == 0.5
    assert anchor_weight(has_clean=True, anchor=0.0) == 0.0


def test_every_entry_point_starts_from_the_same_defaults() -> None:
    """The API's keyword defaults, the adapt job and the demo's adaptation stage read the
    one RunConfig (a default changed there changes them all)."""
    run = RunConfig()
    assert (run.backend, run.torch_device, run.steps, run.batch_size, run.val_fraction) == (
        "torch-sim-fixed",
        "auto",
        300,
        128,
        0.2,
    )
    defaults = pn.adapt.__kwdefaults__
    assert defaults["steps"] == run.steps and defaults["batch_size"] == run.batch_size
    assert defaults["val_fraction"] == run.val_fraction
    assert defaults["torch_device"] == run.torch_device
    assert pn.adapt.__defaults__ == (run.backend,)
    job = AdaptJob(spec_path="net.npz")
    assert (job.backend, job.steps, job.batch_size, job.val_fraction) == (
        run.backend,
        run.steps,
        run.batch_size,
        run.val_fraction,
    )
    demo = DemoConfig()
    assert (demo.backend, demo.batch_size, demo.val_fraction) == (
        run.backend,
        run.batch_size,
        run.val_fraction,
    )
    stage = demo.adaptation(torch_device="cpu")
    assert (stage.steps, stage.writable, stage.settings) == (346, ("fc1.weight",), Settings())
