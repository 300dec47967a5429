"""The Python API given an snnTorch module and spikegen's time-first spikes without
``time_first=True``: a module does not know its own T, so the data's shape decides it, and
spikegen's (25, 1347, 64) read batch-first would be 25 samples of 1347 steps that every
later check accepts (a user trial saw "trained 100 %, on the device 100 %").  Refused,
naming both ways out."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.run.spike_layout import steps_for_module

snn = pytest.importorskip("snntorch")

# spikegen's layout: T=5 steps of n=12 samples, 6 inputs; labels for the 12 samples
TIME_FIRST = (np.random.default_rng(0).random((5, 12, 6)) < 0.3).astype(np.float32)
LABELS = np.arange(12) % 3


def _module() -> torch.nn.Module:
    """The same small model whatever ran before, its outputs spiking on these inputs (a
    silent model is refused by deploy)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3)
    with torch.no_grad():
        linear.weight.abs_().mul_(3.0)
    return torch.nn.Sequential(linear, snn.Leaky(beta=0.9, init_hidden=True, output=True))


def test_steps_for_module_reads_t_in_the_layout_given() -> None:
    module = _module()
    assert steps_for_module(module, TIME_FIRST, None, time_first=True) == 5
    assert steps_for_module(module, TIME_FIRST.transpose(1, 0, 2), None, time_first=False) == 5
    assert steps_for_module(module, TIME_FIRST, 12, time_first=False) == 12  # told: no guess


@pytest.mark.parametrize("call", ["deploy", "check", "adapt"])
def test_time_first_spikes_without_time_first_are_refused_with_both_remedies(call: str) -> None:
    model = _module()
    with pytest.raises(PolystepError) as info:
        if call == "deploy":
            pn.deploy(model, "torch-sim-fixed", data=TIME_FIRST)
        elif call == "check":
            pn.check(model, "torch-sim-fixed", TIME_FIRST, LABELS)
        else:
            pn.adapt(model, "torch-sim", train=(TIME_FIRST, LABELS), steps=1, progress=False)
    assert str(info.value) == (
        "the data's spikes (5, 12, 6), read batch-first, are 5 samples of 12 time steps, more "
        "steps than samples: they look time-first (T, n, N_in), as snnTorch's spikegen makes "
        "them: pass --time-first (time_first=True); if they are 5 samples of 12 steps, pass "
        "--time-steps 12 (time_steps=12)"
    )


def test_time_first_spikes_fewer_samples_than_steps_are_said_as_read(capsys) -> None:
    """12 time-first samples of T=16 (a quick check on a subset) read batch-first fit every
    check as 16 samples of 12 steps: the layout read and T are said, with the flag (a user's
    check scored them so without a word)."""
    x = (np.random.default_rng(3).random((16, 12, 6)) < 0.4).astype(np.float32)
    report = pn.check(_module(), "torch-sim", x, torch_device="cpu")
    assert report.samples == 16 and report.num_steps == 12
    assert (
        "note: T = 12 time steps per sample, from the data's spikes (16, 12, 6) read "
        "batch-first (n, T, N_in): 16 samples; spikes made time-first (T, n, N_in), as "
        "snnTorch's spikegen makes them, need --time-first (time_first=True); --time-steps "
        "(time_steps=) sets T"
    ) in capsys.readouterr().out


def test_time_first_given_to_batch_first_data_says_drop_it() -> None:
    with pytest.raises(PolystepError, match=r"read time-first, are 5 samples of 12 time steps"
                       r".*drop --time-first \(time_first=False\)"):  # fmt: skip
        steps_for_module(_module(), TIME_FIRST.transpose(1, 0, 2), None, time_first=True)


def test_time_first_spikes_with_time_first_deploy_over_their_own_t() -> None:
    deployment = pn.deploy(_module(), "torch-sim-fixed", data=(TIME_FIRST, LABELS),
                           time_first=True, adapt=False, progress=False)  # fmt: skip
    assert deployment.spec.num_steps == 5


def test_deploy_refuses_a_misspelt_setting_before_any_work() -> None:
    """Settings go to deploy by keyword; a typo used to surface after the calibration as
    'Settings.__init__() got an unexpected keyword argument'."""
    with pytest.raises(TypeError, match=r"^deploy\(\) got an unexpected option 'stepz' \(did "
                       r"you mean 'step'\?\); besides its named arguments it takes the settings "
                       r"optimizer, probe,"):  # fmt: skip
        pn.deploy(_module(), "torch-sim-fixed", data=(TIME_FIRST, LABELS), time_first=True,
                  stepz=3, progress=False)  # fmt: skip


def test_data_of_another_input_width_say_both_widths() -> None:
    from polystep_neuro.core.network import NetworkSpec
    from polystep_neuro.run.spike_layout import check_layout

    spec = NetworkSpec.random([10, 3], 5, seed=0)
    with pytest.raises(PolystepError, match=r"the network takes 10 inputs per time step, the "
                       r"data have 6$"):  # fmt: skip
        check_layout(TIME_FIRST.transpose(1, 0, 2), spec, False, "x")


def test_the_time_first_hint_says_the_flag_reads_every_file_so() -> None:
    """A batch-first data file beside a time-first test file: the hint to pass --time-first
    says it turns every file, so the user makes their layouts agree."""
    from polystep_neuro.core.network import NetworkSpec
    from polystep_neuro.run.spike_layout import check_layout

    spec = NetworkSpec.random([6, 3], 5, seed=0)
    with pytest.raises(PolystepError, match=r"looks time-first .* pass --time-first "
                       r"\(time_first=True\), which reads every data file or array of the call "
                       r"that way, so give them all in one layout$"):  # fmt: skip
        check_layout(TIME_FIRST, spec, False, "'spikes' in test.npz")


def test_spikes_that_fit_both_layouts_are_read_batch_first_and_said(capsys, tmp_path) -> None:
    """spikegen's (T, n, N_in) with n == T fits every check read batch-first, and scored at
    chance with no word (a user's 50 samples of T=50: 18 % where 98 % was right): now a note
    names the layout it was read in and the flag; none when time_first=True was asked for."""
    from polystep_neuro.core.network import NetworkSpec

    spec = NetworkSpec.random([6, 4, 3], 5, seed=0)
    square = (np.random.default_rng(1).random((5, 5, 6)) < 0.3).astype(np.uint8)
    labels = np.arange(5) % 3
    pn.evaluate(spec, (square, labels), "torch-sim", torch_device="cpu")
    said = capsys.readouterr().out
    assert "the spikes of data (5, 5, 6) fit both layouts (5 samples, 5 time steps): read " in said
    assert "pass --time-first (time_first=True), or every result is wrong" in said
    pn.evaluate(spec, (square, labels), "torch-sim", torch_device="cpu", time_first=True)
    assert "both layouts" not in capsys.readouterr().out
    # the watcher says it once for its stream, even as a silent iterator
    np.savez(tmp_path / "stream.npz", spikes=np.concatenate([square] * 3), labels=np.zeros(15, int))
    lines: list[str] = []
    records = pn.watch(spec, tmp_path / "stream.npz", "torch-sim", batch_size=5,
                       report=lines.append, out_dir=tmp_path / "w")  # fmt: skip
    assert len(list(records)) == 3
    assert sum("fit both layouts" in line for line in lines) == 1
    assert "(said once for the stream)" in lines[0]


def test_event_frames_are_told_how_to_flatten() -> None:
    """(n, T, 2, H, W) event frames, as event-camera tools give them: the refusal says how to
    make them the network's inputs, in either layout."""
    from polystep_neuro.core.network import NetworkSpec

    spec = NetworkSpec.random([2 * 3 * 3, 5, 2], 4, seed=0)
    frames = (np.random.default_rng(0).random((6, 4, 2, 3, 3)) < 0.3).astype(np.float32)
    labels = np.zeros(6, dtype=np.int64)
    hint = ("(2, 3, 3) per time step (event frames?): flatten each step to 18 inputs, "
            "x.reshape(x.shape[0], x.shape[1], -1) for")  # fmt: skip
    with pytest.raises(PolystepError, match=re.escape(f"{hint} (n, T, ...)")):
        pn.evaluate(spec, (frames, labels), "torch-sim", torch_device="cpu")
    with pytest.raises(PolystepError, match=re.escape(f"{hint} (T, n, ...)")):
        pn.evaluate(spec, (frames.transpose(1, 0, 2, 3, 4), labels), "torch-sim",
                    torch_device="cpu", time_first=True)  # fmt: skip
    flat = frames.reshape(6, 4, -1)
    assert pn.evaluate(spec, (flat, labels), "torch-sim", torch_device="cpu").samples == 6
