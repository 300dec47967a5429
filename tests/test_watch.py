"""The stream watcher: drift detected within a few batches and cleared after it, no alarm on
clean batches, rollback when adapting does not help, and Ctrl-C + resume giving the same log
as a run that was never stopped."""

from __future__ import annotations

import json
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
from polystep_neuro.run.drift_detector import DetectorSettings, DriftDetector
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.streams import DirectoryStream, FileStream, SocketStream, open_stream
from polystep_neuro.run.watch import WatchConfig, Watcher, read_log, run_watch

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
    assert names[1] == ("adapted", drift[0] + 3)  # the drift batch and 3 more collected
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
    assert rolled and rolled[0]["why"] == "the objective did not improve"
    before, after = rolled[0]["objective"]  # the log keeps the values, the line says them
    said = next(line for line in lines if "rolled back" in line)
    drift = lines.index(next(line for line in lines if line.endswith(")") and ": drift (" in line))
    assert lines[drift + 1] == (
        f"collecting {4 * BATCH} field samples (from this batch on), then adapting for 6 steps"
    )
    assert f"objective {before:.3f} -> {after:.3f} (held-out samples; lower is better)" in said
    assert ": rolled back (the objective did not improve, objective" in said  # no "why" key
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
    assert said == []  # the error alone: no notice of what it would adapt comes before it
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

    threading.Thread(target=send).start()
    lines: list[str] = []
    summary = run_watch(field["spec"], stream, _cfg(tmp_path), lines.append)
    stream.close()
    push.close(linger=0)
    batches, events = read_log(tmp_path)
    assert [b["batch"] for b in batches] == [0, 2]
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
        "on the batches with labels (never used to adapt): served network "
        f"{summary['serving_accuracy']:.1%}, deployed network {summary['start_accuracy']:.1%}"
    ) in out
    assert "without labels: adapting" in out


def test_an_empty_folder_is_watched_to_its_end_without_a_traceback(
    field, tmp_path: Path, capsys
) -> None:
    field["spec"].save(tmp_path / "net.npz")
    (tmp_path / "empty").mkdir()
    code = main(["watch", "--spec", str(tmp_path / "net.npz"), "--stream",
                 str(tmp_path / "empty"), "--out", str(tmp_path / "w")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "0 batches: 0 drift" in captured.out
    assert json.loads((tmp_path / "w" / "watch_summary.json").read_text())["batches"] == 0
