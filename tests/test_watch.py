"""The stream watcher: drift detected within a few batches and cleared after it, no alarm on
clean batches, rollback when adapting does not help, and Ctrl-C + resume giving the same log
as a run that was never stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from polystep_neuro.cli import main
from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from polystep_neuro.run import selection
from polystep_neuro.run import watch as watch_module
from polystep_neuro.run.channel_reference import ChannelReference
from polystep_neuro.run.drift_detector import DetectorSettings, DriftDetector, InputBatch
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.streams import DirectoryStream, FileStream, SocketStream, open_stream
from polystep_neuro.run.watch import WatchConfig, Watcher, run_watch
from polystep_neuro.run.watch_log import read_log

T = 6
BATCH = 16
CLEAN, DRIFTED = 40, 30  # batches: clean (20 of them the reference), drifted, clean again


def test_the_detector_needs_votes_in_a_window_and_clears_after_a_clean_window() -> None:
    detector = DriftDetector(DetectorSettings(reference_batches=5, z_limit=3, window=4, votes=2))
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert detector.observe(rng.normal(1.0, 0.1, 3)).change is None
    assert detector.ready
    odd = detector.observe(np.array([5.0, 1.0, 1.0]))
    assert odd.out_of_range and odd.change is None  # one odd batch: no alarm
    assert detector.observe(np.array([1.0, 1.0, 1.0])).change is None
    assert detector.observe(np.array([5.0, 1.0, 1.0])).change == "drift"  # 2 of the last 4
    changes = [detector.observe(np.array([1.0, 1.0, 1.0])).change for _ in range(4)]
    assert changes == [None, None, None, "cleared"]


def test_the_input_channels_flag_a_stuck_channel_but_not_another_class_mix() -> None:
    """A channel stuck on moves its rate by a score of spreads with the output features
    unchanged; batches of one class only (other rates, no drift) and one sample lighting a
    channel the reference never saw fire are no alarm; the reference survives a save and
    load, half built or complete."""
    rng = np.random.default_rng(0)
    settings = DetectorSettings(reference_batches=50, z_limit=5, window=5, votes=3)
    detector = DriftDetector(settings)
    features = np.array([0.2, 1.0, 0.6])  # the outputs never move
    rates = np.full((2, 16), 0.05)
    rates[0, :8] = rates[1, 8:] = 0.25  # class 0 fires on channels 0-7, class 1 on 8-15
    rates[:, 5] = 0.0  # channel 5 never fires in the reference

    def batch(classes=(0, 1)) -> InputBatch:  # 32 samples, 20 steps, 16 channels
        labels = rng.choice(classes, 32)
        spikes = (rng.random((32, 20, 16)) < rates[labels][:, None, :]).astype(np.uint8)
        return InputBatch.of(spikes, np.eye(2)[labels])

    reference = [batch() for _ in range(50)]
    for i, one in enumerate(reference):
        detector.observe(features, one)
        if i == 24:
            half = _saved(detector)
    clean = [detector.observe(features, batch()).z for _ in range(200)]
    assert max(clean) < 5  # 200 clean batches, none out of range
    one_class = [detector.observe(features, batch(classes=(0,))).z for _ in range(50)]
    assert max(one_class) < 5  # channels 0-7 at 5x their all-class rate: explained
    lit = batch()  # one sample lights channel 5 in every step: one sample's worth, z 1
    lit.rates[3, 5] = 1.0
    seen_lit = detector.observe(features, lit)
    assert not seen_lit.out_of_range and seen_lit.z == pytest.approx(1.0, abs=0.05)
    noisy = batch()  # every channel a little busier: no one channel, their sum
    noisy.rates[:] += 0.08
    seen_noisy = detector.observe(features, noisy)
    assert seen_noisy.out_of_range and seen_noisy.where == "all input channels"
    saved = _saved(detector)
    stuck = batch()
    stuck.rates[:, 2] = 1.0  # on in every step of every sample
    seen = [detector.observe(features, stuck) for _ in range(3)]
    assert all(s.out_of_range for s in seen) and seen[0].z > 15
    assert seen[0].where == "input channel 2" and seen[1].change == "drift"  # 3 of 5 out
    again = _loaded(settings, *saved)
    assert again.observe(features, stuck).z == pytest.approx(seen[0].z)
    resumed = _loaded(settings, *half)  # stopped half-way through the reference
    for one in reference[25:]:
        resumed.observe(features, one)
    assert resumed.observe(features, stuck).z == pytest.approx(seen[0].z)
    older = _loaded(settings, saved[0], {})  # a watch from before the input test
    assert older.observe(features, stuck).z == pytest.approx(0.0)


def _saved(detector: DriftDetector) -> tuple[dict, dict]:
    """The detector as the watcher saves it: its state as JSON, the channels as arrays."""
    arrays = {k: v.copy() for k, v in detector.channels.arrays().items()}  # as an .npz holds
    return json.loads(json.dumps(detector.state_dict())), arrays


def _loaded(settings: DetectorSettings, state: dict, arrays: dict) -> DriftDetector:
    detector = DriftDetector(settings)
    detector.load_state_dict(state)
    detector.channels = ChannelReference.from_arrays(arrays)
    return detector


def test_detector_settings_are_checked() -> None:
    with pytest.raises(PolystepError, match="votes must be in 1..window"):
        DetectorSettings(window=3, votes=4)
    with pytest.raises(PolystepError, match="z_limit must be a positive number"):
        DetectorSettings(z_limit=float("nan"))


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> dict:
    """A 16-12-4 network, and a stream: clean, then the input gain halved, then clean."""
    rng = np.random.default_rng(0)

    def spikes(n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, size=n)
        rates = rng.random((n, 16)) * 0.2
        rates[np.arange(n)[:, None], labels[:, None] * 4 + np.arange(4)] += 0.7
        rates *= gain
        return (rng.random((n, T, 16)) < rates[:, None, :]).astype(np.uint8), labels

    parts = [spikes(CLEAN * BATCH, 1.0), spikes(DRIFTED * BATCH, 0.4), spikes(CLEAN * BATCH, 1.0)]
    folder = tmp_path_factory.mktemp("field")
    np.savez(folder / "stream.npz", spikes=np.concatenate([p[0] for p in parts]),
             labels=np.concatenate([p[1] for p in parts]))  # fmt: skip
    np.savez(folder / "clean.npz", spikes=spikes(200 * BATCH, 1.0)[0])
    w0 = np.zeros((12, 16), np.float32)  # hidden neuron h listens to class h % 4's inputs
    w1 = np.zeros((4, 12), np.float32)  # output c sums the hidden neurons of class c
    for h in range(12):
        w0[h, (h % 4) * 4 : (h % 4) * 4 + 4] = 0.6
        w1[h % 4, h] = 0.8
    layers = [LayerSpec(w, du=1.0, dv=0.1, vth=1.0) for w in (w0, w1)]
    writable = ("fc0.weight", "lif0.v_bias", "fc1.weight", "lif1.v_bias")
    spec = NetworkSpec(layers, T, writable)
    return {"spec": spec, "folder": folder}


def _cfg(out: Path, **changes) -> WatchConfig:
    options = dict(
        torch_device="cpu",
        steps=6,
        batch_size=32,
        settings=Settings(seed=0, rank=4),
        detector=DetectorSettings(reference_batches=20),
        adapt_samples=4 * BATCH,
        out_dir=out,
    )
    return WatchConfig(**{**options, **changes})


def test_the_watcher_detects_adapts_and_clears(field, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(selection, "PROXY_MARGIN", -1e9)  # accept what the run hands back
    stream = FileStream(field["folder"] / "stream.npz", BATCH)
    summary = run_watch(field["spec"], stream, _cfg(tmp_path))
    batches, events = read_log(tmp_path)
    assert len(batches) == 2 * CLEAN + DRIFTED and summary["batches"] == len(batches)
    names = [(e["event"], e["batch"]) for e in events]
    drift = [b for n, b in names if n == "drift"]
    assert len(drift) == 1 and CLEAN <= drift[0] <= CLEAN + 4  # within 5 batches of the onset
    # the drift batch and 3 more collected; the start of the run is logged before it runs
    assert names[1:3] == [("adapting", drift[0] + 3), ("adapted", drift[0] + 3)]
    assert events[1]["samples"] == 4 * BATCH and events[1]["steps"] == _cfg(tmp_path).steps
    cleared = [b for n, b in names if n == "cleared"]
    assert len(cleared) == 1 and CLEAN + DRIFTED <= cleared[0] <= CLEAN + DRIFTED + 8
    assert all("serving_accuracy" in b for b in batches)  # labels were there: reported only
    served = [b["phase"] for b in batches if names[1][1] < b["batch"] < cleared[0]]
    assert set(served) == {"adapted"}
    after = [b for b in batches if b["batch"] > cleared[0]]  # the deployed network again
    assert all(b["serving_accuracy"] == b["start_accuracy"] for b in after)
    assert (tmp_path / "watch.png").stat().st_size > 0
    assert json.loads((tmp_path / "watch_summary.json").read_text())["events"]["drift"] == 1


def test_no_alarm_on_a_long_clean_stream(field, tmp_path: Path) -> None:
    run_watch(field["spec"], FileStream(field["folder"] / "clean.npz", BATCH), _cfg(tmp_path))
    batches, events = read_log(tmp_path)
    assert len(batches) == 200 and events == []


def test_a_run_that_does_not_improve_the_objective_is_rolled_back(
    field, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(selection, "PROXY_MARGIN", 1e9)  # no point can beat the start
    lines: list[str] = []
    stream = FileStream(field["folder"] / "stream.npz", BATCH)
    run_watch(field["spec"], stream, _cfg(tmp_path), lines.append)
    batches, events = read_log(tmp_path)
    rolled = [e for e in events if e["event"] == "rolled_back"]
    assert rolled and rolled[0]["why"] == "the objective did not improve by 1e+09 or more"
    # the start and the run's best point (the network handed back is the start: its own
    # objective said nothing), and how the collected samples were split
    before, best = rolled[0]["objective"]  # the log keeps the values, the line says them
    assert best <= before and (rolled[0]["samples"], rolled[0]["held_out"]) == (51, 13)
    said = next(line for line in lines if "rolled back" in line)
    drift = lines.index(next(line for line in lines if line.endswith(")") and ": drift (" in line))
    assert lines[drift + 1] == (
        f"collecting {4 * BATCH} field samples (from this batch on), then adapting for 6 steps "
        "(20% of them held out, unlabelled, to decide whether the adapted network is served)"
    )
    assert f"objective {before:.3f} -> {best:.3f} (held-out samples; lower is better)" in said
    assert ": rolled back (the objective did not improve by 1e+09 or more, objective" in said
    assert said.endswith(", on 51 samples, 13 held out)")
    assert not any(e["event"] == "adapted" for e in events)
    # served and deployed are one network throughout
    assert all(b["serving_accuracy"] == b["start_accuracy"] for b in batches)


def test_stopping_and_resuming_gives_the_log_of_an_unbroken_run(field, tmp_path: Path) -> None:
    path = field["folder"] / "stream.npz"
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "whole"))
    watcher = Watcher(field["spec"], _cfg(tmp_path / "parts"))
    for record in watcher.watch(FileStream(path, BATCH)):
        if record.get("batch") == CLEAN + 3 and "event" not in record:  # mid-collection
            watcher.request_stop()
    _, events = read_log(tmp_path / "parts")
    assert events and events[-1]["event"] == "drift"  # stopped before adapting
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "parts", resume=True))
    whole = (tmp_path / "whole" / "watch.jsonl").read_text()
    assert (tmp_path / "parts" / "watch.jsonl").read_text() == whole


def test_resume_refuses_another_network_or_stream(field, tmp_path: Path) -> None:
    """A resumed watch skips the batches its state counted and keeps that network's output
    statistics: resumed on another network or another stream, it went on in silence."""
    path = field["folder"] / "stream.npz"
    watcher = Watcher(field["spec"], _cfg(tmp_path))
    for record in watcher.watch(FileStream(path, BATCH)):
        if record.get("batch") == 3:
            watcher.request_stop()
    spec = field["spec"]
    first = replace(spec.layers[0], weight=spec.layers[0].weight * np.float32(1.5))
    other = NetworkSpec([first, *spec.layers[1:]], spec.num_steps, spec.writable)
    with pytest.raises(PolystepError, match="saved for another network than this command"):
        run_watch(other, FileStream(path, BATCH), _cfg(tmp_path, resume=True))
    clean = field["folder"] / "clean.npz"
    with pytest.raises(PolystepError, match=f"reading --stream {path.resolve()}, this command "):
        run_watch(field["spec"], FileStream(clean, BATCH), _cfg(tmp_path, resume=True))
    with pytest.raises(PolystepError, match=f"--batch-size {BATCH}, this command gives 7"):
        run_watch(field["spec"], FileStream(path, 7), _cfg(tmp_path, resume=True))
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path, resume=True))  # same: on
    batches, _ = read_log(tmp_path)
    assert [b["batch"] for b in batches] == list(range(len(batches)))


@pytest.mark.parametrize("source", ["folder", "socket"])
def test_a_stop_ends_the_wait_of_an_idle_following_source(field, tmp_path: Path, source) -> None:
    """Ctrl-C on a watcher that waits for new data (``--follow``, a socket) stops it at once,
    and the figure and summary are written: the wait used to ignore the stop."""
    if source == "folder":
        folder = tmp_path / "in"
        folder.mkdir()
        for i in range(3):
            np.savez(folder / f"b{i}.npz", spikes=np.ones((BATCH, T, 16), np.uint8))
        stream = DirectoryStream(folder, follow=True, poll_s=0.05)
    else:
        stream = SocketStream("tcp://127.0.0.1:*")  # waits forever for a message
    watcher = Watcher(field["spec"], _cfg(tmp_path / "out"))
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        for record in watcher.watch(stream):
            seen.append(record["batch"])
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(1.0)  # every file read; the source is waiting for more
    watcher.request_stop()
    assert done.wait(5.0), "the watcher did not stop while its source was idle"
    stream.close()
    assert seen == ([0, 1, 2] if source == "folder" else [])


def test_time_first_streams_read_as_batch_first_and_the_mistake_is_named(
    field, tmp_path: Path
) -> None:
    """snnTorch's spikegen makes (T, B, N_in): ``--time-first`` reads such a stream as the
    batch-first one, and without it the error says what the layout looks like."""
    with np.load(field["folder"] / "stream.npz") as npz:
        spikes, labels = npz["spikes"][: 3 * BATCH], npz["labels"][: 3 * BATCH]
    np.savez(tmp_path / "tf.npz", spikes=spikes.swapaxes(0, 1), labels=labels)
    plain = list(FileStream(field["folder"] / "stream.npz", BATCH))[:3]
    turned = list(open_stream(str(tmp_path / "tf.npz"), BATCH, time_first=True))
    assert len(turned) == 3
    for a, b in zip(plain, turned, strict=True):
        np.testing.assert_array_equal(a.spikes, b.spikes)
        np.testing.assert_array_equal(a.labels, b.labels)
    folder = tmp_path / "batches"
    folder.mkdir()
    np.savez(folder / "b0.npz", spikes=spikes[:BATCH].swapaxes(0, 1), labels=labels[:BATCH])
    with pytest.raises(PolystepError, match=r"look time-first .* pass --time-first"):
        list(open_stream(str(folder), BATCH))
    assert next(iter(open_stream(str(folder), BATCH, time_first=True))).spikes.shape == (
        BATCH,
        T,
        16,
    )
    # the other way: a batch-first file read with --time-first, its labels telling
    np.savez(tmp_path / "bf.npz", spikes=spikes[:BATCH], labels=labels[:BATCH])
    with pytest.raises(PolystepError) as caught:
        list(open_stream(str(tmp_path / "bf.npz"), BATCH, time_first=True))
    assert str(caught.value).endswith(
        f"— its spikes ({BATCH}, {T}, 16) are batch-first (B, T, N_in) already, as its "
        f"{BATCH} labels say: drop --time-first (time_first=False)"
    )


def test_the_watcher_names_the_layout_of_unlabelled_batches(field, tmp_path: Path) -> None:
    """Without labels nothing in the file betrays a time-first layout but its shape against
    the network's T: the watcher checks every batch against the spec and names the flag,
    both ways, instead of the device's bare shape error."""
    with np.load(field["folder"] / "clean.npz") as npz:
        spikes = npz["spikes"][:BATCH]
    np.savez(tmp_path / "tf.npz", spikes=spikes.swapaxes(0, 1))  # (T, B, N_in), no labels
    said: list[str] = []
    with pytest.raises(PolystepError, match=r"looks time-first .* pass --time-first"):
        stream = FileStream(tmp_path / "tf.npz", BATCH)
        run_watch(field["spec"], stream, _cfg(tmp_path / "a"), said.append)
    # the batch is dropped, then the stream ends with none that fit: an error; no notice of
    # what it would adapt comes before it (the device opens for a batch that fits)
    assert len(said) == 1 and said[0].startswith("batch 0: dropped ('spikes' of stream batch 0")
    folder = tmp_path / "batches"
    folder.mkdir()
    np.savez(folder / "b0.npz", spikes=spikes)  # batch-first, read as time-first
    stream = open_stream(str(folder), BATCH, time_first=True)
    with pytest.raises(PolystepError, match=r"stream batch 0 \(.*b0\.npz\)"):  # the file named
        run_watch(field["spec"], open_stream(str(folder), BATCH, time_first=True), _cfg(tmp_path))
    with pytest.raises(PolystepError, match=rf"already batch-first .*T={T}\); drop --time-first"):
        run_watch(field["spec"], stream, _cfg(tmp_path / "b"))


def test_a_following_folder_says_when_it_waits(tmp_path: Path) -> None:
    """`watch --follow` went quiet between files: waiting looked like a hang."""
    folder = tmp_path / "in"
    folder.mkdir()
    np.savez(folder / "b0.npz", spikes=np.ones((2, T, 16), np.uint8))
    stream = DirectoryStream(folder, follow=True, poll_s=0.05, idle_s=0.2)
    said: list[str] = []
    stream.on_wait = said.append
    assert [b.index for b in stream] == [0]
    assert said == [f"waiting for batch 1 in {folder} (Ctrl-C stops)"]


def test_a_socket_stream_takes_npz_messages_and_drops_malformed_ones(field) -> None:
    import io

    import zmq

    stream = SocketStream("tcp://127.0.0.1:*", idle_s=2.0)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(stream.endpoint)
    buffer = io.BytesIO()
    np.savez(buffer, spikes=np.ones((3, T, 16), np.uint8))

    def send() -> None:
        push.send(buffer.getvalue())
        push.send(b"not an npz")
        push.send(buffer.getvalue())

    threading.Thread(target=send).start()
    start = time.monotonic()
    got = list(stream)
    stream.close()
    push.close(linger=0)
    assert [b.index for b in got] == [0, 1] and got[0].labels is None
    assert got[0].spikes.shape == (3, T, 16) and time.monotonic() - start < 10


def test_a_recording_of_any_size_is_read_but_a_batch_file_over_the_limit_is_not(
    tmp_path: Path, monkeypatch
) -> None:
    """The size limit guards what a sender puts in one message or batch file; a recording
    given as --stream FILE is the user's own and was refused over 256 MiB (a long mnist
    recording), now it is read whole."""
    from polystep_neuro.run import streams

    path = tmp_path / "recording.npz"
    np.savez(path, spikes=np.ones((64, T, 16), np.uint8))
    with pytest.raises(PolystepError, match=r"spikes.npy is over 0 MiB, the most one message "
                       r"or batch file may hold: send smaller batches \(a recording of any "
                       r"size is read whole as one --stream FILE\)"):  # fmt: skip
        streams.read_batch(path, str(path), limit=1000)
    limits = []
    real = streams.read_batch

    def spy(*args, **kwargs):
        limits.append(kwargs.get("limit", streams.MAX_MESSAGE_BYTES))
        return real(*args, **kwargs)

    monkeypatch.setattr(streams, "read_batch", spy)
    assert sum(len(b.spikes) for b in FileStream(path, 16)) == 64 and limits == [None]


def test_a_watcher_on_a_socket_logs_and_skips_what_is_no_batch_of_its_network(
    field, tmp_path: Path
) -> None:
    """A live feed outlives a bad message: a message that is no .npz was dropped without a
    word, and a batch of the wrong shape stopped the whole watcher; both are now said,
    logged as 'dropped' events, and skipped."""
    import io

    import zmq

    stream = SocketStream("tcp://127.0.0.1:*", idle_s=2.0)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(stream.endpoint)

    def npz(n_in: int) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, spikes=np.ones((BATCH, T, n_in), np.uint8))
        return buffer.getvalue()

    def send() -> None:
        for message in (npz(16), b"not an npz", npz(32), npz(16)):
            push.send(message)
        buffer = io.BytesIO()  # a sender's own numbers go into the log with the batch
        np.savez(buffer, spikes=np.ones((BATCH, T, 16), np.uint8), seq=np.int64(41),
                 sent_at=np.float64(1.5), note=np.array("text is not logged"))  # fmt: skip
        push.send(buffer.getvalue())

    threading.Thread(target=send).start()
    lines: list[str] = []
    summary = run_watch(field["spec"], stream, _cfg(tmp_path), lines.append)
    stream.close()
    push.close(linger=0)
    batches, events = read_log(tmp_path)
    assert [b["batch"] for b in batches] == [0, 2, 3]
    assert "sent" not in batches[0] and batches[2]["sent"] == {"seq": 41, "sent_at": 1.5}
    dropped = [e for e in events if e["event"] == "dropped"]
    assert [e["batch"] for e in dropped] == [1, 1]
    assert dropped[0]["why"].startswith("message 1 must be an .npz holding 'spikes'")
    assert f"inputs must have shape (B, {T}, 16)" in dropped[1]["why"]
    assert sum("dropped" in line for line in lines) == 2
    assert summary["events"]["dropped"] == 2


def test_the_command_refuses_a_public_address_and_watches_a_file(field, tmp_path, capsys) -> None:
    with pytest.raises(PolystepError, match="listens on loopback only"):
        open_stream("tcp://0.0.0.0:5555", BATCH)
    field["spec"].save(tmp_path / "net.npz")
    code = main(["watch", "--spec", str(tmp_path / "net.npz"), "--stream",
                 str(field["folder"] / "stream.npz"), "--batch-size", str(BATCH),
                 "--reference-batches", "20", "--adapt-samples", "64", "--steps", "4",
                 "--torch-device", "cpu", "--out", str(tmp_path / "w")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"{2 * CLEAN + DRIFTED} batches: 1 drift" in out and "1 cleared" in out
    summary = json.loads((tmp_path / "w" / "watch_summary.json").read_text())
    assert (  # the stream's labels: reported on the console, never used
        "on all the batches with labels (never used to adapt): served network "
        f"{summary['serving_accuracy']:.1%}, deployed network {summary['start_accuracy']:.1%}"
    ) in out
    assert (
        "accuracy from the stream's labels (never used to adapt): while drift was flagged (" in out
    )
    assert "without labels: adapting" in out


def test_an_empty_folder_is_watched_to_its_end_without_a_traceback(
    field, tmp_path: Path, capsys
) -> None:
    field["spec"].save(tmp_path / "net.npz")
    (tmp_path / "empty").mkdir()
    code = main(["watch", "--spec", str(tmp_path / "net.npz"), "--stream",
                 str(tmp_path / "empty"), "--out", str(tmp_path / "w"),
                 "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "0 batches: 0 drift" in captured.out
    assert ("note: the first 50 batches are the drift test's clean reference and this stream "
            "held 0, so no batch was tested for drift") in captured.out  # fmt: skip
    assert json.loads((tmp_path / "w" / "watch_summary.json").read_text())["batches"] == 0


def _folder_of_batches(field, folder: Path, count: int) -> list[np.ndarray]:
    """``count`` clean batches of the field stream, one .npz each (batch_0000.npz, ...)."""
    folder.mkdir()
    with np.load(field["folder"] / "stream.npz") as npz:
        spikes, labels = npz["spikes"], npz["labels"]
    parts = []
    for i in range(count):
        part = spikes[i * BATCH : (i + 1) * BATCH]
        np.savez(
            folder / f"batch_{i:04d}.npz", spikes=part, labels=labels[i * BATCH : (i + 1) * BATCH]
        )
        parts.append(part)
    return parts


def test_a_bad_batch_in_a_folder_is_dropped_and_the_watch_goes_on(field, tmp_path: Path) -> None:
    """One bad file in a folder stream ended the watcher (a wrong input width), or ended it
    with a device message naming no batch (NaN, values that are no spikes on loihi-fixed):
    each is now said, logged as 'dropped' with the batch, its file and why, and skipped."""
    folder = tmp_path / "in"
    good = _folder_of_batches(field, folder, 24)
    np.savez(folder / "batch_0005.npz", spikes=np.ones((BATCH, T, 15), np.uint8))
    nan = good[8].astype(np.float32)
    nan[2, 3, 4] = np.nan
    np.savez(folder / "batch_0008.npz", spikes=nan)
    half = good[11].astype(np.float32)
    half[0, 0, 0] = 0.5
    np.savez(folder / "batch_0011.npz", spikes=half)
    (folder / "batch_0013.npz").write_bytes(b"not an npz")
    lines: list[str] = []
    summary = run_watch(field["spec"], open_stream(str(folder), BATCH), _cfg(tmp_path / "w"),
                        lines.append)  # fmt: skip
    batches, events = read_log(tmp_path / "w")
    dropped = {e["batch"]: e for e in events if e["event"] == "dropped"}
    assert sorted(dropped) == [5, 8, 11, 13] and summary["events"]["dropped"] == 4
    assert [b["batch"] for b in batches] == [i for i in range(24) if i not in dropped]
    assert summary["batches"] == 20
    name = str(folder / "batch_0005.npz")
    assert dropped[5]["file"] == name
    assert dropped[5]["why"] == (
        f"'spikes' of stream batch 5 ({name}): inputs must have shape (B, {T}, 16) (batch, "
        f"time, inputs), got ({BATCH}, {T}, 15) — the network takes 16 inputs per time step, "
        "the data have 15"
    )
    assert dropped[8]["why"] == (
        f"'spikes' of stream batch 8 ({folder / 'batch_0008.npz'}): 1 values are NaN or "
        "infinite (the first: sample 2, step 3, input 4); spike data must be finite"
    )
    assert dropped[11]["why"].startswith(
        f"'spikes' of stream batch 11 ({folder / 'batch_0011.npz'}): torch-sim-fixed "
        "(loihi-fixed) takes binary spikes (0 or 1), these are not (e.g. 0.5)"
    )
    assert dropped[13]["file"] == str(folder / "batch_0013.npz")
    assert dropped[13]["why"].startswith(
        f"batch 13 ({folder / 'batch_0013.npz'}) must be an .npz holding 'spikes'"
    )
    said = [line for line in lines if ": dropped (" in line]
    assert said == [f"batch {i}: dropped ({dropped[i]['why']})" for i in (5, 8, 11, 13)]


def test_a_float_backend_takes_currents_but_not_nan_from_a_file(field, tmp_path: Path) -> None:
    """The 0/1 check is the fixed-point device's; non-finite values are refused on any, and
    a file stream's batch is named by its index."""
    with np.load(field["folder"] / "stream.npz") as npz:
        spikes = npz["spikes"][: 6 * BATCH].astype(np.float32)
    spikes[BATCH : 2 * BATCH] *= 0.5  # batch 1: currents
    spikes[3 * BATCH, 0, 0] = np.inf  # batch 3
    np.savez(tmp_path / "x.npz", spikes=spikes)
    cfg = _cfg(tmp_path / "w", backend="torch-sim")
    summary = run_watch(field["spec"], FileStream(tmp_path / "x.npz", BATCH), cfg)
    batches, events = read_log(tmp_path / "w")
    assert [b["batch"] for b in batches] == [0, 1, 2, 4, 5] and summary["batches"] == 5
    assert [(e["batch"], e["event"]) for e in events] == [(3, "dropped")]
    assert "file" not in events[0]
    assert events[0]["why"] == (
        "'spikes' of stream batch 3: 1 values are NaN or infinite (the first: sample 0, step "
        "0, input 0); spike data must be finite"
    )


def test_a_stream_of_bad_batches_stops_with_an_error(field, tmp_path: Path) -> None:
    """A stream where every batch is bad is not this network's: it does not consume itself
    in silence; `max_bad_batches` in a row stop the watcher with an error."""
    folder = tmp_path / "in"
    _folder_of_batches(field, folder, 2)
    for i in range(2, 8):
        np.savez(folder / f"batch_{i:04d}.npz", spikes=np.ones((BATCH, T, 32), np.uint8))
    lines: list[str] = []
    stream = open_stream(str(folder), BATCH)
    with pytest.raises(PolystepError) as caught:
        run_watch(field["spec"], stream, _cfg(tmp_path / "w", max_bad_batches=3), lines.append)
    last = folder / "batch_0004.npz"
    assert str(caught.value) == (
        "3 batches in a row did not fit the network (max_bad_batches), the last because "
        f"'spikes' of stream batch 4 ({last}): inputs must have shape (B, {T}, 16) (batch, "
        f"time, inputs), got ({BATCH}, {T}, 32) — the network takes 16 inputs per time step, "
        "the data have 32; is this the stream of this network? (every "
        f"one is logged as 'dropped' in {tmp_path / 'w' / 'watch.jsonl'})"
    )
    batches, events = read_log(tmp_path / "w")
    assert [b["batch"] for b in batches] == [0, 1]
    assert [e["batch"] for e in events if e["event"] == "dropped"] == [2, 3, 4]
    assert sum(": dropped (" in line for line in lines) == 3


def test_serving_npz_is_the_served_network_and_resume_reads_it(
    field, tmp_path: Path, monkeypatch, capsys
) -> None:
    """serving.npz held the adapted values as bare arrays (an empty archive while nothing
    adapted was served): `evaluate --spec` refused it.  It is now the network served, as
    the device runs it, and a watch stopped while an adapted network is served resumes
    from it to the log of an unbroken run."""
    monkeypatch.setattr(selection, "PROXY_MARGIN", -1e9)  # accept what the run hands back
    path = field["folder"] / "stream.npz"
    watcher = Watcher(field["spec"], _cfg(tmp_path / "parts"))
    stopped_at = None
    for record in watcher.watch(FileStream(path, BATCH)):
        if record.get("event") == "adapted":
            stopped_at = record["batch"] + 2
        if record.get("batch") == stopped_at and "event" not in record:
            watcher.request_stop()
    serving = tmp_path / "parts" / "serving.npz"
    served = NetworkSpec.load(serving)
    state = json.loads((tmp_path / "parts" / "watch_state.json").read_text())
    assert state["served_adapted"] and state["serving"] == ["lif0.v_bias", "lif0.vth"]
    values, start = served.parameters(), watcher.device.backend.spec.parameters()
    for name in state["serving"]:
        np.testing.assert_array_equal(values[name], watcher.serving[name])
    assert not np.array_equal(values["lif0.v_bias"], start["lif0.v_bias"])
    np.testing.assert_array_equal(values["fc0.weight"], start["fc0.weight"])
    with np.load(path) as npz:
        np.savez(tmp_path / "few.npz", spikes=npz["spikes"][:64], labels=npz["labels"][:64])
    capsys.readouterr()
    assert main(["evaluate", "--spec", str(serving), "--data", str(tmp_path / "few.npz"),
                 "--torch-device", "cpu"]) == 0  # fmt: skip
    assert "accuracy" in capsys.readouterr().out
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "whole"))
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "parts", resume=True))
    whole = (tmp_path / "whole" / "watch.jsonl").read_text()
    assert (tmp_path / "parts" / "watch.jsonl").read_text() == whole
    # cleared at the end: the deployed network is served again, and serving.npz says so
    np.testing.assert_array_equal(
        NetworkSpec.load(serving).parameters()["lif0.v_bias"], start["lif0.v_bias"]
    )


def test_the_api_checks_its_arguments_when_called(field, tmp_path: Path) -> None:
    """pn.watch checked nothing until the first record was asked for, took no detector
    setting (reference_batches=...: a TypeError about WatchConfig) and no str out_dir."""
    import polystep_neuro as pn

    path = field["folder"] / "stream.npz"
    spec = field["spec"]
    with pytest.raises(TypeError, match=r"unexpected option 'reference_batch' \(did you mean "
                       r"'reference_batches'\?\); it takes .*z_limit"):  # fmt: skip
        pn.watch(spec, str(path), reference_batch=20)
    with pytest.raises(PolystepError, match="adapt_samples must be an integer >= 2, got 1"):
        pn.watch(spec, str(path), adapt_samples=1)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PolystepError, match="output folder .*a_file/w is not writable"):
        pn.watch(spec, str(path), out_dir=str(tmp_path / "a_file" / "w"))
    with pytest.raises(PolystepError, match="votes must be in 1..window"):
        pn.watch(spec, path, votes=9)
    with pytest.raises(PolystepError, match=r"^stream 'nowhere' not found: no such file or "):
        pn.watch(spec, "nowhere")
    out = str(tmp_path / "w")  # a str, as users write it
    records = pn.watch(spec, path, batch_size=BATCH, out_dir=out, reference_batches=5,
                       torch_device="cpu", seed=3)  # fmt: skip
    first = [next(records) for _ in range(7)]
    records.close()
    assert [r["batch"] for r in first] == list(range(7))
    assert [r["z"] is None for r in first] == [True] * 5 + [False] * 2  # 5 reference batches
    assert records.watcher.cfg.settings.seed == 3 and records.watcher.cfg.out_dir == Path(out)
    assert len(read_log(out)[0]) == 7


def test_the_api_writes_the_summary_and_plot_the_command_writes(field, tmp_path: Path) -> None:
    """pn.watch wrote the log but not watch_summary.json and watch.png, which the README
    says the command and the API both leave in the out folder."""
    import polystep_neuro as pn

    out = tmp_path / "w"
    watching = pn.watch(field["spec"], field["folder"] / "stream.npz", batch_size=BATCH,
                        out_dir=out, reference_batches=5, torch_device="cpu")  # fmt: skip
    records = list(watching)
    batches = [r for r in records if "event" not in r]
    written = json.loads((out / "watch_summary.json").read_text())
    assert watching.summary == written and written["batches"] == len(batches) > 5
    assert written["interrupted"] is False
    assert (out / "watch.png").stat().st_size > 1000


def test_the_api_takes_t_from_the_stream_for_an_snntorch_model(tmp_path: Path) -> None:
    """pn.adapt takes T from the data for an snnTorch model; pn.watch now does too (a file's
    or folder's first batch), and says what to pass where it cannot (a socket)."""
    import snntorch as snn
    import torch

    import polystep_neuro as pn

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 8), snn.Leaky(beta=0.9, init_hidden=True),
        torch.nn.Linear(8, 4), snn.Leaky(beta=0.9, init_hidden=True, output=True),
    )  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    spikes = (np.random.default_rng(0).random((T, BATCH, 16)) < 0.3).astype(np.uint8)
    np.savez(folder / "b0.npz", spikes=spikes)  # time-first, as spikegen makes them
    records = pn.watch(model, folder, time_first=True, out_dir=tmp_path / "w",
                       torch_device="cpu", reference_batches=5)  # fmt: skip
    assert records.watcher.spec.num_steps == T
    assert [r["batch"] for r in records] == [0]
    with pytest.raises(PolystepError, match="an snnTorch model needs time_steps .* pass "
                       "time_steps=T"):  # fmt: skip
        pn.watch(model, "tcp://127.0.0.1:*", out_dir=tmp_path / "s")


def test_a_network_with_no_writable_hidden_bias_adapts_them_too(
    field, tmp_path: Path, monkeypatch
) -> None:
    """The README's showcase: the demo's network marks only fc1.weight writable, so the
    watcher adapted lif0.vth alone, which moved its objective by less than the margin, and
    it rolled back every time.  The hidden biases are added (and said, by the label-free
    writable set every label-free run uses), unless the caller names the writable set."""
    monkeypatch.setattr(selection, "PROXY_MARGIN", -1e9)  # accept what the run hands back
    spec = field["spec"].with_writable(("fc1.weight",))
    lines: list[str] = []
    path = field["folder"] / "stream.npz"
    run_watch(spec, FileStream(path, BATCH), _cfg(tmp_path / "a"), lines.append)
    assert lines[0].startswith(  # said at the start as what happens once drift is found
        "when drift is found, without labels: adapting the hidden neurons' biases and "
        "thresholds (the biases "
        "added: the network marks none writable) (lif0.v_bias, lif0.vth), which"
    )
    assert json.loads((tmp_path / "a" / "watch_state.json").read_text())["adaptations"] == 1
    assert NetworkSpec.load(tmp_path / "a" / "adapt-1" / "adapted.npz").writable == (
        "fc1.weight", "lif0.v_bias", "lif0.vth",
    )  # fmt: skip
    lines.clear()
    cfg = _cfg(tmp_path / "b", writable=("lif0.vth",))
    run_watch(spec, FileStream(path, BATCH), cfg, lines.append)
    assert not any("biases added" in line for line in lines)


def test_the_summary_gives_the_accuracy_while_drift_was_flagged(
    field, tmp_path: Path, monkeypatch
) -> None:
    """Averaged over the whole stream, the clean batches hid what adapting did on the
    drifted ones: the summary and the report split them."""
    monkeypatch.setattr(selection, "PROXY_MARGIN", -1e9)
    lines: list[str] = []
    stream = FileStream(field["folder"] / "stream.npz", BATCH)
    summary = run_watch(field["spec"], stream, _cfg(tmp_path), lines.append)
    batches, _ = read_log(tmp_path)
    parts = summary["stretches"]
    adapted = [b for b in batches if b["served"] == "adapted"]
    flagged = [b for b in batches if b["phase"] != "watching" or b in adapted]
    assert {b["batch"] for b in adapted} - {b["batch"] for b in batches if b["phase"] != "watching"}
    elsewhere = [b for b in batches if b not in flagged]  # the deployed network served them
    assert all(b["serving_accuracy"] == b["start_accuracy"] for b in elsewhere)
    assert parts["drift_flagged"]["batches"] == len(flagged) > 0
    assert parts["adapted_served"]["batches"] == len(adapted) > 0
    assert parts["elsewhere"]["batches"] == len(batches) - len(flagged)
    served = np.mean([b["serving_accuracy"] for b in flagged])
    assert parts["drift_flagged"]["serving_accuracy"] == pytest.approx(served)
    p = parts
    assert lines[-1] == (
        "accuracy from the stream's labels (never used to adapt): while drift was flagged "
        f"({len(flagged)} batches): served {p['drift_flagged']['serving_accuracy']:.1%}, "
        f"deployed {p['drift_flagged']['start_accuracy']:.1%} (with an adapted network served "
        f"({len(adapted)} batches): served {p['adapted_served']['serving_accuracy']:.1%}, "
        f"deployed {p['adapted_served']['start_accuracy']:.1%}); elsewhere "
        f"({len(batches) - len(flagged)} batches): served "
        f"{p['elsewhere']['serving_accuracy']:.1%}, deployed "
        f"{p['elsewhere']['start_accuracy']:.1%}"
    )


def test_ctrl_c_during_an_adaptation_stops_the_watch_and_resume_adapts_again(
    field, tmp_path: Path, monkeypatch
) -> None:
    """A user's Ctrl-C lands in the adaptation's own handler: the watch must stop too (not
    serve the cut-short network and read on), and the resume must match an unbroken run."""
    monkeypatch.setattr(selection, "PROXY_MARGIN", -1e9)  # accept what the run hands back
    path = field["folder"] / "stream.npz"
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "whole"))
    real_build = watch_module.Adapter.build

    def interrupted_build(*args, **kwargs):
        def ctrl_c(adapter, record) -> None:
            if record["step"] == 2:
                os.kill(os.getpid(), signal.SIGINT)

        return real_build(*args, on_step=ctrl_c, **kwargs)

    monkeypatch.setattr(watch_module.Adapter, "build", staticmethod(interrupted_build))
    lines: list[str] = []
    summary = run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "parts"),
                        lines.append)  # fmt: skip
    assert summary["interrupted"] is True
    _, events = read_log(tmp_path / "parts")
    # the start of the adaptation is logged; nothing served: no "adapted"
    assert [e["event"] for e in events] == ["drift", "adapting"]
    started = next(
        line for line in lines if re.match(r"batch \d+: adapting \(on \d+ samples", line)
    )
    assert started.endswith("steps; no batch is served until it ends)")
    stop = next(line for line in lines if line.startswith("stopped during the adaptation"))
    assert stop.endswith("which is not served; --resume reads this batch again and adapts "
                         "from the start")  # fmt: skip
    monkeypatch.setattr(watch_module.Adapter, "build", real_build)
    run_watch(field["spec"], FileStream(path, BATCH), _cfg(tmp_path / "parts", resume=True))
    whole = (tmp_path / "whole" / "watch.jsonl").read_text()
    assert (tmp_path / "parts" / "watch.jsonl").read_text() == whole


def test_a_time_first_shape_error_says_the_shape_as_given(field, tmp_path: Path) -> None:
    """Read time-first, a batch's shape is the transposed one: the message says both, so
    the user recognises the (T, B, N_in) array they sent."""
    np.savez(tmp_path / "wide.npz", spikes=np.zeros((T, BATCH, 20), np.uint8))
    with pytest.raises(PolystepError) as caught:
        run_watch(field["spec"], open_stream(str(tmp_path / "wide.npz"), BATCH, time_first=True),
                  _cfg(tmp_path / "out"))  # fmt: skip
    assert (
        f"got ({BATCH}, {T}, 20) (read time-first from ({T}, {BATCH}, 20) as given) — the "
        "network takes 16 inputs per time step, the data have 20" in str(caught.value)
    )


def test_the_summary_accuracy_is_over_samples_not_batches(field, tmp_path: Path) -> None:
    """A user's 450-sample file in batches of 32 ended with a 2-sample batch that weighed as
    much as a full one: 93.8 % where evaluate said 96.7 %."""
    with np.load(field["folder"] / "stream.npz") as npz:
        spikes, labels = npz["spikes"][: 3 * BATCH + 2], npz["labels"][: 3 * BATCH + 2].copy()
    labels[-2:] = (labels[-2:] + 1) % 4  # the short tail batch: wrong labels
    np.savez(tmp_path / "tail.npz", spikes=spikes, labels=labels)
    summary = run_watch(field["spec"], FileStream(tmp_path / "tail.npz", BATCH),
                        _cfg(tmp_path / "out"))  # fmt: skip
    batches, _ = read_log(tmp_path / "out")
    assert [b["labelled"] for b in batches] == [BATCH] * 3 + [2]
    right = sum(b["start_accuracy"] * b["labelled"] for b in batches)
    assert summary["start_accuracy"] == pytest.approx(right / len(labels))
    assert summary["start_accuracy"] > np.mean([b["start_accuracy"] for b in batches]) + 0.05


def test_a_socket_watch_ends_after_its_idle_timeout(field, tmp_path: Path, capsys) -> None:
    """A socket watch waited until Ctrl-C (exit 130, "interrupted"): --idle-timeout ends it
    normally once no batch came for that long; a bad value is a usage error."""
    import io
    import socket

    import zmq

    field["spec"].save(tmp_path / "net.npz")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    buffer = io.BytesIO()
    np.savez(buffer, spikes=np.ones((BATCH, T, 16), np.uint8), seq=np.int64(7))

    def send() -> None:
        time.sleep(1.0)  # after the watcher bound its port
        push.send(buffer.getvalue())

    threading.Thread(target=send).start()
    start = time.monotonic()
    code = main(["watch", "--spec", str(tmp_path / "net.npz"), "--stream",
                 f"tcp://127.0.0.1:{port}", "--idle-timeout", "2", "--out",
                 str(tmp_path / "w")])  # fmt: skip
    push.close(linger=0)
    out = capsys.readouterr().out
    assert code == 0 and time.monotonic() - start < 30
    assert "1 batches: 0 drift" in out
    summary = json.loads((tmp_path / "w" / "watch_summary.json").read_text())
    assert summary["batches"] == 1 and not summary.get("interrupted", False)
    with pytest.raises(SystemExit):
        main(["watch", "--spec", str(tmp_path / "net.npz"), "--stream", "x",
              "--idle-timeout", "0"])  # fmt: skip
    assert "--idle-timeout: must be a finite number of seconds > 0, got 0" in (
        capsys.readouterr().err
    )
