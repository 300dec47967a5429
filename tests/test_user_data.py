"""The data containers the Python API takes (``run.user_data``), and what ``deploy`` and
``check`` say about labels and silent outputs, as a user meets them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import polystep_neuro as pn
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import user_data
from polystep_neuro.run.data import SpikeDataset

T, N_IN, CLASSES = 8, 12, 4


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, T, N_IN)) < 0.3).astype(np.float32), rng.integers(0, CLASSES, n)


def _spec() -> NetworkSpec:
    return NetworkSpec.random([N_IN, 16, CLASSES], T, seed=0)


def test_every_container_gives_the_same_spikes_and_labels(tmp_path: Path) -> None:
    x, y = _data()
    np.savez(tmp_path / "d.npz", spikes=x, labels=y)
    np.savez(tmp_path / "field.npz", spikes=x)
    tensors = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    forms = {
        "pair": (x, y),
        "dict": {"spikes": x, "labels": y},
        "path": tmp_path / "d.npz",
        "path as str": str(tmp_path / "d.npz"),
        "loaded npz": np.load(tmp_path / "d.npz"),
        "TensorDataset": tensors,
        "DataLoader": DataLoader(tensors, batch_size=7, shuffle=True),
        "SpikeDataset": SpikeDataset(x, y, 8),
    }
    for name, form in forms.items():
        spikes, labels = user_data.split(form, need_labels=True)
        assert np.array_equal(np.asarray(spikes), x), name
        assert np.array_equal(np.asarray(labels), y), name
    for form in (x, tmp_path / "field.npz", {"spikes": x}, TensorDataset(torch.as_tensor(x))):
        spikes, labels = user_data.split(form, need_labels=False)
        assert labels is None and np.array_equal(np.asarray(spikes), x)
    with pytest.raises(PolystepError, match="the data needs labels: give a"):
        user_data.split(x, need_labels=True)


def test_a_subset_is_its_own_samples_not_its_parents() -> None:
    """random_split's pieces (Subsets, nested too, and DataLoaders over them) give their own
    samples: reading the parent would put the validation samples into training."""
    x, y = _data(30)
    whole = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    train, held = torch.utils.data.random_split(
        whole, [20, 10], generator=torch.Generator().manual_seed(0)
    )
    for form in (train, DataLoader(train, batch_size=4, shuffle=True)):
        spikes, labels = user_data.split(form, need_labels=True)
        assert np.array_equal(np.asarray(spikes), x[train.indices])
        assert np.array_equal(np.asarray(labels), y[train.indices])
    inner = torch.utils.data.Subset(held, [2, 0])  # a Subset of a Subset
    spikes, labels = user_data.split(inner, need_labels=True)
    assert np.array_equal(np.asarray(labels), y[[held.indices[2], held.indices[0]]])


def test_what_cannot_be_read_is_named_with_the_forms_that_can(tmp_path: Path) -> None:
    x, _ = _data()

    class Samples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.as_tensor(x[i]), 0

    for form in (Samples(), DataLoader(Samples())):
        with pytest.raises(PolystepError, match=r"a Samples cannot be read as a whole; collect "
                           r"its samples first, e\.g\. x = torch\.stack"):  # fmt: skip
            user_data.split(form, need_labels=False)
    tensors = TensorDataset(torch.as_tensor(x), torch.zeros(len(x)))
    some = torch.utils.data.SubsetRandomSampler(range(10))
    with pytest.raises(PolystepError, match="a DataLoader with a SubsetRandomSampler picks some "
                       "samples, not the whole dataset"):  # fmt: skip
        user_data.split(DataLoader(tensors, sampler=some), need_labels=False)
    with pytest.raises(PolystepError, match="must be a \\(spikes, labels\\) pair, .*; got tuple"):
        user_data.split((x,), need_labels=False)
    with pytest.raises(PolystepError, match=r"got an array of shape \(40, 96\)"):
        user_data.split(x.reshape(40, -1), need_labels=False)
    with pytest.raises(PolystepError, match=r"holds \['x', 'y'\], not 'spikes'"):
        user_data.split({"x": x, "y": 0}, need_labels=False)
    with pytest.raises(PolystepError, match="data file not found"):
        user_data.split(tmp_path / "missing.npz", need_labels=False)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.eye(CLASSES)[np.arange(40) % CLASSES], r"look one-hot \(40, 4\): give class indices"),
        (np.arange(40) % CLASSES + 0.7, "must be whole class indices; 40 are not"),
        (np.full(40, np.nan), "contain NaN or infinite values"),
        (np.full(40, 7), r"must lie in \[0, 4\) for this network's 4 classes; got 7 to 7"),
        (np.full(40, -1), r"must lie in \[0, 4\)"),
        (np.zeros(39, dtype=np.int64), r"one class index per sample, \(40,\); got shape \(39,\)"),
        (np.ones(40, dtype=bool), "must be integer class indices, got bool"),
    ],
)
def test_bad_labels_are_one_message(labels: np.ndarray, message: str) -> None:
    with pytest.raises(PolystepError, match=message):
        user_data.labels_for(labels, 40, CLASSES)


def test_whole_float_labels_and_tensors_are_taken() -> None:
    out = user_data.labels_for(torch.tensor([0.0, 3.0, 1.0]), 3, CLASSES)
    assert out.dtype == np.int64 and out.tolist() == [0, 3, 1]


def test_deploy_and_adapt_refuse_a_label_the_network_lacks_before_any_work() -> None:
    x, y = _data()
    bad = np.where(y == 0, 7, y)
    with pytest.raises(PolystepError, match=r"the labels of the data must lie in \[0, 4\)"):
        pn.deploy(_spec(), "torch-sim-fixed", data=(x, bad), budget=100, progress=False,
                  torch_device="cpu")  # fmt: skip
    with pytest.raises(PolystepError, match=r"the labels of train must lie in \[0, 4\)"):
        pn.adapt(_spec(), "torch-sim", train=(x, bad), steps=1, progress=False,
                 torch_device="cpu")  # fmt: skip
    with pytest.raises(PolystepError, match=r"the labels of test set 'clean' must lie in"):
        pn.adapt(_spec(), "torch-sim", train=(x, y), test={"clean": (x, bad)}, steps=1,
                 progress=False, torch_device="cpu")  # fmt: skip
    with pytest.raises(PolystepError, match=r"the labels of test set 'clean' .*one-hot"):
        pn.deploy(_spec(), "torch-sim-fixed", data=x, test={"clean": (x, np.eye(4)[y])},
                  budget=100, progress=False, torch_device="cpu")  # fmt: skip


def test_adapt_takes_an_npz_path_and_a_dict_as_validation(tmp_path: Path) -> None:
    """The path and dict forms run exactly as the pair does (a dict holding 'spikes' is one
    validation set, not a mapping of named ones)."""
    x, y = _data()
    held = _data(24, seed=1)
    np.savez(tmp_path / "d.npz", spikes=x, labels=y)
    runs = [
        pn.adapt(
            _spec(),
            "torch-sim",
            train=train,
            validation=val,
            steps=2,
            progress=False,
            torch_device="cpu",
            writable="all",
        )  # fmt: skip
        for train, val in (
            ((x, y), held),
            (tmp_path / "d.npz", {"spikes": held[0], "labels": held[1]}),
        )
    ]
    assert runs[0].result.start == runs[1].result.start
    assert runs[0].result.end == runs[1].result.end
    assert np.array_equal(runs[0].spec.parameters()["fc0.weight"],
                          runs[1].spec.parameters()["fc0.weight"])  # fmt: skip


def test_check_without_labels_compares_decisions_and_scores_no_accuracy() -> None:
    x, y = _data()
    report = pn.check(_spec(), "torch-sim-fixed", x, torch_device="cpu")
    assert report.reference_accuracy is None and report.device_accuracy is None
    assert (
        report.summary()
        .splitlines()[0]
        .startswith("no labels, so no accuracy scored on 40 samples; the same decision on ")
    )
    labelled = pn.check(_spec(), "torch-sim-fixed", {"spikes": x, "labels": y}, torch_device="cpu")
    assert labelled.same_prediction == report.same_prediction
    assert labelled.device_accuracy is not None


def _silent(spec: NetworkSpec) -> NetworkSpec:
    """The output layer's threshold out of reach: it never spikes (a model read out by its
    membrane potential looks like this to a device)."""
    last = spec.layers[-1]
    return NetworkSpec([*spec.layers[:-1], replace(last, vth=1e6)], spec.num_steps).validate()


def test_a_silent_output_layer_is_said_in_check_and_deploy() -> None:
    x, y = _data()
    spec = _silent(_spec())
    report = pn.check(spec, "torch-sim-fixed", x, y, torch_device="cpu")
    assert report.reference_silent == 1.0
    note = "the trained model's output layer fired no spike on 100% of the samples"
    assert report.summary().startswith(note)
    # deploy stops: a model that answers nothing gives no targets to recover towards
    with pytest.raises(PolystepError, match=f"^nothing to deploy towards: {note}"):
        pn.deploy(spec, "torch-sim-fixed", data=(x, y), budget=200, progress=False,
                  torch_device="cpu")  # fmt: skip
    assert pn.check(_spec(), "torch-sim-fixed", x, y, torch_device="cpu").reference_silent < 0.5


def test_deploy_says_at_once_when_its_network_cannot_go_back_into_a_biasless_module() -> None:
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_IN, 32, bias=False), snn.Leaky(beta=0.9, init_hidden=True),
        torch.nn.Linear(32, CLASSES, bias=False),
        snn.Leaky(beta=0.9, init_hidden=True, output=True),
    )  # fmt: skip
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.mul_(3)
    x, _ = _data(60)
    lines: list[str] = []
    result = pn.deploy(net, "torch-sim-fixed", data=x, time_steps=T, budget=2000,
                       progress=False, torch_device="cpu", report=lines.append)  # fmt: skip
    assert lines[-1] == (
        "note: the network handed back cannot go back into your module as it is built: layer "
        "0 has no bias, but the network to load biases its neurons; build it with "
        "nn.Linear(..., bias=True) (the device network itself is complete)"
    )
    with pytest.raises(Exception, match="layer 0 has no bias"):
        result.load_into(net)


def test_a_validation_set_too_small_to_choose_is_said(capsys) -> None:
    x, y = _data(40)
    pn.adapt(_spec(), "torch-sim", train=(x, y), steps=1, torch_device="cpu")
    out = capsys.readouterr().out
    assert (
        "validation 'drifted' holds 8 samples: one sample moves its accuracy by 12 points, too "
        "coarse to tell networks apart" in out
    )
    lines: list[str] = []
    pn.deploy(_spec(), "torch-sim-fixed", data=(x, y), budget=200, progress=False,
              torch_device="cpu", report=lines.append)  # fmt: skip
    assert any(line.startswith("validation 'val' holds 8 samples") for line in lines)
    x, y = _data(200)
    pn.adapt(_spec(), "torch-sim", train=(x, y), steps=1, torch_device="cpu")
    assert "holds 40 samples" not in capsys.readouterr().out


def test_a_test_file_that_is_the_training_file_is_said(tmp_path: Path, capsys) -> None:
    from polystep_neuro.cli import main

    x, y = _data(60)
    np.savez(tmp_path / "d.npz", spikes=x, labels=y)
    np.savez(tmp_path / "t.npz", spikes=x, labels=y)  # the same values, another file
    _spec().save(tmp_path / "spec.npz")
    code = main(["adapt", "--spec", str(tmp_path / "spec.npz"), "--data", str(tmp_path / "d.npz"),
                 "--test", f"clean={tmp_path / 'd.npz'}", "--test",
                 f"other={tmp_path / 't.npz'}", "--steps", "1", "--backend", "torch-sim",
                 "--torch-device", "cpu", "--out", str(tmp_path / "run"),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert (
        "note: --test clean is the data the run adapts on: its accuracy is not a held-out "
        "score" in out
    )
    assert "--test other" not in out
    # the same in the API: the same array, or the same file by path
    pn.adapt(_spec(), "torch-sim", train=(x, y), test={"same": (x, y)}, steps=1,
             torch_device="cpu")  # fmt: skip
    assert "note: test set 'same'" not in capsys.readouterr().out  # two tuples: not caught
    pair = (x, y)
    pn.adapt(_spec(), "torch-sim", train=pair, test={"same": pair}, steps=1, torch_device="cpu")
    assert "note: test set 'same' is the data the run adapts on" in capsys.readouterr().out
    lines: list[str] = []
    pn.deploy(_spec(), "torch-sim-fixed", data=tmp_path / "d.npz",
              test={"clean": str(tmp_path / "d.npz")}, budget=200, torch_device="cpu",
              report=lines.append, progress=False)  # fmt: skip
    assert (
        "note: test set 'clean' is the data the run adapts on: its accuracy is not a "
        "held-out score" in lines
    )


def test_deploy_prints_its_lines_with_progress_as_adapt_does(capsys) -> None:
    x, y = _data(60)
    pn.deploy(_spec(), "torch-sim-fixed", data=(x, y), budget=200, torch_device="cpu",
              adapt=False)  # fmt: skip
    out = capsys.readouterr().out
    assert "adaptation: skipped because it was turned off (adapt=False / --no-adapt)" in out
    assert "converted: val " in out
    pn.deploy(_spec(), "torch-sim-fixed", data=(x, y), budget=200, torch_device="cpu",
              adapt=False, progress=False)  # fmt: skip
    assert capsys.readouterr().out == ""


def test_the_command_line_checks_labels_as_the_api_does(tmp_path: Path, capsys) -> None:
    from polystep_neuro.cli import main

    x, y = _data(60)
    _spec().save(tmp_path / "spec.npz")
    np.savez(tmp_path / "float.npz", spikes=x, labels=y.astype(np.float64))
    np.savez(tmp_path / "onehot.npz", spikes=x, labels=np.eye(CLASSES)[y])
    args = ["evaluate", "--spec", str(tmp_path / "spec.npz"), "--torch-device", "cpu", "--data"]
    assert main([*args, str(tmp_path / "float.npz")]) == 0  # whole numbers in floats: taken
    capsys.readouterr()
    assert main([*args, str(tmp_path / "onehot.npz")]) == 2
    assert (
        f"the labels in {tmp_path / 'onehot.npz'} look one-hot (60, 4): give class "
        "indices, labels.argmax(1)" in capsys.readouterr().err
    )


def test_a_label_free_objective_named_for_labelled_data_is_said(capsys) -> None:
    x, y = _data(60)
    pn.adapt(_spec(), "torch-sim", train=(x, y), steps=1, torch_device="cpu",
             objective="entropy")  # fmt: skip
    assert (
        "note: the label-free objective 'entropy' is for data without labels; these have "
        "labels, so the run adapts to them" in capsys.readouterr().out
    )


def test_a_file_is_read_alike_by_the_api_and_the_commands(tmp_path: Path) -> None:
    """One reader serves both: labels saved under another name are refused in the API too
    (it ran label-free on them), and a file without 'spikes' is never called unlabelled."""
    from polystep_neuro.run.adapt_job import load_spike_data

    x, y = _data()
    np.savez(tmp_path / "y.npz", spikes=x, y=y)
    np.savez(tmp_path / "other.npz", x=x)
    with pytest.raises(PolystepError, match="y.npz has no 'labels' but has 'y': name it"):
        user_data.split(tmp_path / "y.npz", need_labels=False)
    for need in (False, True):
        with pytest.raises(PolystepError, match=r"other.npz holds \['x'\], not 'spikes' "
                           r"\(and 'labels'\): save it as np.savez"):  # fmt: skip
            load_spike_data(tmp_path / "other.npz", _spec(), need_labels=need)


def test_a_tensor_that_requires_grad_is_data_and_a_meta_tensor_is_refused() -> None:
    """Spikes straight from a training script (requires_grad=True) raised torch's "Can't call
    numpy() on Tensor that requires grad" from deep inside every API call."""
    from polystep_neuro.run.user_data import split

    x = torch.ones(4, 3, 2, requires_grad=True)
    spikes, labels = split((x, torch.zeros(4, dtype=torch.long)), need_labels=True)
    assert not spikes.requires_grad and np.asarray(spikes.numpy()).sum() == 24
    with pytest.raises(PolystepError, match="the spikes of the data are a tensor on the 'meta'"):
        split(torch.empty(4, 3, 2, device="meta"), need_labels=False)


def test_a_silent_nir_graph_is_told_what_to_check_first() -> None:
    """A NIR graph from another tool reads silent when its dt or its exporter's input gain
    is off (a Sinabs graph without dt, Norse's LIFCell): the note names both."""
    from polystep_neuro.run.reference import silent_note

    hint = "; for a NIR graph, check first the dt it was read at"
    assert hint in silent_note(1.0, "NIR graph net.nir")
    assert hint in silent_note(1.0, "the NIR graph")
    assert hint not in silent_note(1.0, "the snnTorch model")
    assert silent_note(0.4, "NIR graph net.nir") is None
