"""What the Python API says when it converts the network it is given: ``pn.adapt(spec)``
ran a zero-reset spec with one-step delays that ``polystep-neuro adapt --spec`` runs
without them, and ``pn.adapt(model)`` / ``pn.watch(model)`` an uncalibrated conversion
(served 97.6 % where the deployed network served 98.7 %), and neither said a word."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.core.network import NetworkSpec

snn = pytest.importorskip("snntorch")

RNG = np.random.default_rng(0)
SPIKES = (RNG.random((40, 5, 6)) < 0.3).astype(np.uint8)
LABELS = np.arange(40) % 3


def _adapt(model: object, capsys) -> str:
    pn.adapt(model, "torch-sim-fixed", train=(SPIKES, LABELS), steps=1, torch_device="cpu")
    return capsys.readouterr().out


def test_a_spec_the_api_converts_is_said_and_one_it_runs_as_given_is_not(capsys) -> None:
    device = NetworkSpec.random([6, 4, 3], 5, seed=0)  # device semantics already
    assert "note: adapt runs the spec" not in _adapt(device, capsys)
    undelayed = replace(device, layers=[replace(la, delay=0) for la in device.layers])
    said = _adapt(undelayed, capsys)
    assert (
        "note: adapt runs the spec converted for torch-sim-fixed (the command runs the file "
        "as given), with 2 approximate change(s): layer 0: delay 0 -> 1" in said
    )


def test_a_model_is_said_to_run_uncalibrated_with_the_way_to_calibrate_it(capsys) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 3), snn.Leaky(beta=0.9, init_hidden=True,
                                                                   output=True))  # fmt: skip
    said = _adapt(model, capsys)
    assert "note: adapt runs the model converted for torch-sim-fixed, uncalibrated, with " in said
    assert "pn.deploy(model, backend, data=...) calibrates it on your data first" in said


def test_a_spec_at_another_t_names_what_sets_its_t() -> None:
    """pn.evaluate(spec, data_at_T70, time_steps=70) said '(time_steps=70 sets it)', the
    argument already given: a spec runs the T it was converted with."""
    from polystep_neuro.core.errors import PolystepError

    spec = NetworkSpec.random([6, 4, 3], 5, seed=0)
    longer = (RNG.random((8, 7, 6)) < 0.3).astype(np.uint8)
    with pytest.raises(PolystepError, match=r"the data 7 \(converting the trained model again "
                       r"with time_steps=7 sets it\)"):  # fmt: skip
        pn.evaluate(spec, (longer, np.zeros(8, int)), "torch-sim", time_steps=7)
