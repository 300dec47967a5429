"""Damaged input files are one clear error, never a traceback from deep inside: the spec and
data loaders are fuzzed (truncations, bit flips, random bytes), and the CLI turns each kind of
bad file into one line on stderr and exit code 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polystep_neuro.cli import main
from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.adapt_job import load_spike_data

SPEC = NetworkSpec.random([6, 5, 3], 4, seed=0, writable=("fc1.weight",))


def _spec_bytes() -> bytes:
    buf = io.BytesIO()
    meta, arrays = SPEC.to_arrays()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()


def _data_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    spikes = (rng.random((7, 4, 6)) < 0.5).astype(np.uint8)
    np.savez(buf, spikes=spikes, labels=rng.integers(0, 3, 7))
    return buf.getvalue()


GOOD_SPEC, GOOD_DATA = _spec_bytes(), _data_bytes()


def _damaged(good: bytes) -> st.SearchStrategy[bytes]:
    truncated = st.integers(0, len(good) - 1).map(lambda n: good[:n])
    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), max_size=8)
    flipped = flips.map(lambda changes: _flip(good, changes))
    return st.one_of(truncated, flipped, st.binary(max_size=2048))


def _flip(good: bytes, changes: list[tuple[int, int]]) -> bytes:
    data = bytearray(good)
    for where, value in changes:
        data[where] = value
    return bytes(data)


# 150 damaged files per loader and run; tmp_path_factory is safe to share between examples.
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(blob=_damaged(GOOD_SPEC))
def test_a_damaged_spec_file_is_a_spec_error_or_a_valid_spec(tmp_path_factory, blob) -> None:
    path = tmp_path_factory.mktemp("spec") / "net.npz"
    path.write_bytes(blob)
    try:
        spec = NetworkSpec.load(path)
    except SpecError as exc:
        assert "\n" not in str(exc)
    else:
        spec.validate()  # a flip inside an array's bytes can leave a valid file


@FUZZ
@given(blob=_damaged(GOOD_DATA))
def test_a_damaged_data_file_is_a_polystep_error_or_valid_data(tmp_path_factory, blob) -> None:
    path = tmp_path_factory.mktemp("data") / "data.npz"
    path.write_bytes(blob)
    try:
        spikes, labels = load_spike_data(path, SPEC)
    except PolystepError as exc:
        assert "\n" not in str(exc)
    else:
        assert spikes.shape[1:] == (4, 6) and labels.shape == (spikes.shape[0],)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one error line must say)."""
    files = {}
    (tmp_path / "empty.npz").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.npz", "is not a polystep-neuro spec")
    (tmp_path / "truncated.npz").write_bytes(GOOD_SPEC[: len(GOOD_SPEC) // 2])
    files["truncated"] = (tmp_path / "truncated.npz", "is not a polystep-neuro spec")
    flipped = bytearray(GOOD_SPEC)
    flipped[30:60] = bytes(30)  # inside the first member's header
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    files["bit-flipped"] = (tmp_path / "flipped.npz", "is not a polystep-neuro spec")
    np.save(tmp_path / "array.npy", np.zeros(3))
    files["npy"] = (tmp_path / "array.npy", "it holds a single array (.npy)")
    meta, arrays = SPEC.to_arrays()
    np.savez(tmp_path / "list.npz", __meta__=np.array(json.dumps([meta])), **arrays)
    files["meta list"] = (tmp_path / "list.npz", "its metadata is a JSON list")
    return files


@pytest.mark.parametrize("kind", ["empty", "truncated", "bit-flipped", "npy", "meta list"])
def test_the_cli_says_one_line_and_exits_2_for_a_bad_spec(tmp_path, capsys, kind) -> None:
    path, message = _bad_files(tmp_path)[kind]
    code = main(["adapt", "--spec", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0]


@pytest.mark.parametrize("kind", ["empty", "truncated", "npy"])
def test_the_cli_says_one_line_and_exits_2_for_bad_data(tmp_path, capsys, kind) -> None:
    SPEC.save(tmp_path / "net.npz")
    path, _ = _bad_files(tmp_path)[kind]
    code = main(["adapt", "--spec", str(tmp_path / "net.npz"), "--data", str(path),
                 "--out", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0]


def test_data_with_other_time_steps_names_where_the_networks_come_from(tmp_path: Path) -> None:
    path = tmp_path / "t9.npz"
    np.savez(path, spikes=np.zeros((7, 9, 6), np.uint8), labels=np.zeros(7, np.int64))
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC)
    assert "got (7, 9, 6)" in str(info.value)
    assert (
        "the network runs 4 time steps per sample, the data 9 (convert --time-steps 9 sets "
        "it)" in str(info.value)
    )


def test_nan_in_the_data_is_named_where_the_file_is_read(tmp_path: Path, capsys) -> None:
    """NaN reached the simulator, which called it a non-spike (fixed point) or failed
    without the file's name (float), after the run had started."""
    spikes = np.zeros((7, 4, 6), np.float32)
    spikes[3, 2, 5] = np.nan
    spikes[5, 0, 1] = np.inf
    path = tmp_path / "nan.npz"
    np.savez(path, spikes=spikes, labels=np.zeros(7, np.int64))
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC)
    assert str(info.value) == (
        f"'spikes' in {path}: 2 values are NaN or infinite (the first: sample 3, step 2, "
        "input 5); spike data must be finite"
    )
    SPEC.save(tmp_path / "net.npz")
    code = main(["evaluate", "--spec", str(tmp_path / "net.npz"), "--data", str(path)])
    assert code == 2 and "2 values are NaN or infinite" in capsys.readouterr().err


def test_time_first_on_batch_first_data_says_to_drop_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "batch_first.npz"
    np.savez(path, spikes=np.zeros((7, 4, 6), np.uint8), labels=np.zeros(7, np.int64))
    with pytest.raises(PolystepError, match=r": \(7, 4, 6\) as given, which is already "
                       r"batch-first .*T=4\); drop --time-first"):  # fmt: skip
        load_spike_data(path, SPEC, time_first=True)


@pytest.mark.parametrize("spikes", [np.zeros((4, 6), np.uint8), np.zeros(5, np.float32)])
def test_deploys_unlabelled_time_first_data_of_the_wrong_rank_is_one_line(
    tmp_path: Path, spikes: np.ndarray
) -> None:
    """deploy reads data without labels (the model's answers stand in): a time-first file
    that is not 3-D says so instead of failing inside numpy's transpose."""
    path = tmp_path / "field.npz"
    np.savez(path, spikes=spikes)
    with pytest.raises(PolystepError, match=r"'spikes' in .* must be 3-D, got shape"):
        load_spike_data(path, SPEC, time_first=True, need_labels=False)
    np.savez(path, spikes=np.zeros((4, 7, 6), np.uint8))  # (T, n, N_in)
    batch_first, labels = load_spike_data(path, SPEC, time_first=True, need_labels=False)
    assert batch_first.shape == (7, 4, 6) and labels is None


@pytest.mark.parametrize("name", ["label", "Y", "targets"])
def test_a_misnamed_labels_array_is_named_instead_of_ignored(tmp_path: Path, name) -> None:
    """A typo'd labels key is not unlabelled data: adapt and deploy would otherwise run
    label-free and never mention the array."""
    path = tmp_path / "d.npz"
    np.savez(path, spikes=np.zeros((7, 4, 6), np.uint8), **{name: np.zeros(7, np.int64)})
    message = (
        f"{path} has no 'labels' but has '{name}': name it 'labels' (np.savez(path, "
        "spikes=..., labels=...))"
    )
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC, need_labels=False)
    assert str(info.value) == message + " to use them, or leave it out for unlabelled data"
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC, need_labels=False, time_steps_flag="--time-steps")  # deploy
    assert str(info.value).startswith(message)
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC)
    assert str(info.value) == message


def test_unrelated_extra_arrays_still_read_as_unlabelled_data(tmp_path: Path) -> None:
    path = tmp_path / "field.npz"
    np.savez(path, spikes=np.zeros((7, 4, 6), np.uint8), timestamps=np.arange(7))
    spikes, labels = load_spike_data(path, SPEC, need_labels=False)
    assert spikes.shape == (7, 4, 6) and labels is None


def test_a_network_given_as_data_and_data_given_as_a_network_name_the_flags(tmp_path) -> None:
    """`evaluate --data model.pt` said "'spikes is not a file in the archive'" and
    `adapt --teacher data.npz` "'__meta__ is not a file in the archive'": each now says what
    the file is and which flag takes it."""
    import torch

    spec = NetworkSpec.random([4, 3, 2], 5)
    spec.save(tmp_path / "net.npz")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    np.savez(tmp_path / "data.npz", spikes=np.zeros((3, 5, 4), np.uint8), labels=np.zeros(3))
    with pytest.raises(PolystepError, match="is a polystep-neuro spec, not data: give the "
                       "network as --spec"):  # fmt: skip
        load_spike_data(tmp_path / "net.npz", spec)
    # a torch.save file may hold a model or the user's tensors: both ways out are named
    torch.save({"spikes": torch.zeros(3, 5, 4), "labels": torch.zeros(3)}, tmp_path / "d.pt")
    for name in ("model.pt", "d.pt"):
        with pytest.raises(PolystepError, match=r"is a torch.save file: a model goes in as "
                           r"--snntorch \(or --teacher\), and data are read from an \.npz "
                           r"holding 'spikes' \(and 'labels'\): np\.savez"):  # fmt: skip
            load_spike_data(tmp_path / name, spec)
    with pytest.raises(SpecError, match=r"data.npz is a data file \(it holds 'spikes'\), not a"):
        NetworkSpec.load(tmp_path / "data.npz")


def test_evaluate_says_how_a_float_backend_reads_values_that_are_not_spikes(
    tmp_path, capsys
) -> None:
    """`evaluate --data floats.npz --backend torch-sim` printed an accuracy (5 %) with no word
    that the values went in as currents."""
    spec = NetworkSpec.random([4, 3, 2], 5)
    spec.save(tmp_path / "net.npz")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "floats.npz", spikes=rng.random((6, 5, 4)), labels=np.zeros(6, int))
    args = ["evaluate", "--spec", str(tmp_path / "net.npz"), "--torch-device", "cpu"]
    assert main([*args, "--data", str(tmp_path / "floats.npz"), "--backend", "torch-sim"]) == 0
    out = capsys.readouterr().out
    assert "holds values other than 0 and 1: torch-sim takes them as input currents" in out
    # a fixed-point backend refuses them, and no note says it took them
    assert main([*args, "--data", str(tmp_path / "floats.npz")]) == 2
    said = capsys.readouterr()
    assert "must be binary spikes" in said.err and "input currents, not spikes" not in said.out


def test_adapt_refuses_values_before_announcing_the_run(tmp_path: Path, capsys) -> None:
    """`adapt` on float values and a fixed-point backend printed its 'adapting ...' banner,
    wrote config.json into a new --out, then failed at the first step: the refusal now comes
    first, names the set, and leaves no folder behind."""
    spec = NetworkSpec.random([4, 3, 2], 5)
    spec.save(tmp_path / "net.npz")
    rng = np.random.default_rng(0)
    spikes = (rng.random((30, 5, 4)) < 0.3).astype(np.float32)
    np.savez(tmp_path / "train.npz", spikes=spikes, labels=np.zeros(30, int))
    np.savez(tmp_path / "test.npz", spikes=spikes * 0.5, labels=np.zeros(30, int))
    out = tmp_path / "run"
    args = ["adapt", "--spec", str(tmp_path / "net.npz"), "--torch-device", "cpu",
            "--data", str(tmp_path / "train.npz"), "--test", f"t={tmp_path / 'test.npz'}",
            "--steps", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    said = capsys.readouterr()
    assert "test set 't' holds values other than 0 and 1 (e.g. 0.5)" in said.err
    assert "adapting lif0.v_bias" not in said.out and not out.exists()
    assert main([*args, "--backend", "torch-sim"]) == 0  # a float backend takes them


def test_spikes_under_another_name_are_named_with_every_array(tmp_path: Path) -> None:
    """A file of 'x' and 'y' got numpy's "'spikes is not a file in the archive'", then,
    renamed, the labels' message: one message naming both arrays and the save call."""
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.zeros((7, 4, 6), np.uint8), y=np.zeros(7, np.int64))
    with pytest.raises(PolystepError) as info:
        load_spike_data(path, SPEC, need_labels=False)
    assert str(info.value) == (
        f"{path} holds ['x', 'y'], not 'spikes' (and 'labels'): save it as np.savez(path, "
        "spikes=<(n, T, N_in) spikes>, labels=<(n,) class indices>)"
    )


def test_boolean_spikes_are_spikes_and_a_text_array_is_named(tmp_path: Path) -> None:
    """0/1 spikes stored as booleans were refused as 'must be numeric arrays' (which one?)."""
    rng = np.random.default_rng(0)
    spikes = rng.random((7, 4, 6)) < 0.3
    np.savez(tmp_path / "b.npz", spikes=spikes, labels=np.arange(7) % 3)
    read, labels = load_spike_data(tmp_path / "b.npz", SPEC)
    np.testing.assert_array_equal(read, spikes.astype(np.uint8))
    np.savez(tmp_path / "s.npz", spikes=spikes, labels=np.array(list("abcdefg")))
    with pytest.raises(PolystepError, match=r"'labels' must be a numeric array, got <U1$"):
        load_spike_data(tmp_path / "s.npz", SPEC)
