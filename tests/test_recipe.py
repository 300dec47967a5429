"""One run recipe: the API and the `adapt` command give the same run for the same network,
data and seed, bit for bit; the renamed API keywords still work for one release."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import polystep_neuro as pn
from polystep_neuro.cli import main
from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.demo import DemoConfig

T = 6
STEPS = 6


@pytest.fixture(scope="module")
def task() -> dict:
    """A small network and class-coded spike data (drifted and clean)."""
    rng = np.random.default_rng(0)

    def spikes(n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 4, size=n)
        rates = rng.random((n, 16)) * 0.2
        rates[np.arange(n)[:, None], labels[:, None] * 4 + np.arange(4)] += 0.6 * gain
        return (rng.random((n, T, 16)) < rates[:, None, :]).astype(np.uint8), labels

    spec = NetworkSpec.random([16, 12, 4], T, seed=1, writable=("fc0.weight", "fc1.weight"))
    return {"spec": spec, "drifted": spikes(120, 0.5), "clean": spikes(80, 1.0)}


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "step_seconds"} for r in history]


def test_the_api_and_the_adapt_command_are_one_run(task, tmp_path: Path, capsys) -> None:
    for name in ("drifted", "clean"):
        spikes, labels = task[name]
        np.savez(tmp_path / f"{name}.npz", spikes=spikes, labels=labels)
    task["spec"].save(tmp_path / "spec.npz")
    code = main([
        "adapt", "--spec", str(tmp_path / "spec.npz"), "--data", str(tmp_path / "drifted.npz"),
        "--replay", str(tmp_path / "clean.npz"), "--test", f"clean={tmp_path / 'clean.npz'}",
        "--steps", str(STEPS), "--rank", "4", "--seed", "3", "--torch-device", "cpu",
        "--out", str(tmp_path / "cli"), "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    api = pn.adapt(
        task["spec"],
        train=task["drifted"],
        replay=task["clean"],
        test={"clean": task["clean"]},
        steps=STEPS,
        rank=4,
        seed=3,
        torch_device="cpu",
        progress=False,
    )
    cli = NetworkSpec.load(tmp_path / "cli" / "adapted.npz")
    for name, value in api.spec.parameters().items():
        assert cli.parameters()[name].tobytes() == value.tobytes(), name
    logged = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").open()]
    assert _strip(logged) == _strip(api.history)
    # the held-out shares of both data sets validate, under the same names
    assert {"val_drifted_accuracy", "val_replay_accuracy"} <= set(api.result.start)
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["end"] == api.result.end and summary["anchor"] == 0.0
    assert api.result.adapted == ("fc0.weight", "fc1.weight")


def test_the_renamed_api_keywords_still_work_and_warn(task) -> None:
    common = dict(train=task["drifted"], steps=2, rank=4, progress=False)
    new = pn.adapt(task["spec"], torch_device="cpu", **common)
    with pytest.warns(DeprecationWarning, match="adapt: device= is now torch_device="):
        old = pn.adapt(task["spec"], device="cpu", **common)
    assert _strip(old.history) == _strip(new.history)
    with pytest.warns(DeprecationWarning, match=r"Adaptation.before is now .*result.start"):
        assert old.before == old.result.start
    with pytest.warns(DeprecationWarning, match=r"Adaptation.after is now .*result.end"):
        assert old.after == old.result.end
    # an snnTorch model needs T: the old keyword still delivers it (the empty model is then
    # refused by the converter, not for a missing T)
    with pytest.raises(PolystepError, match="an snnTorch model needs time_steps"):
        pn.adapt([], **common)
    with (
        pytest.warns(DeprecationWarning, match="adapt: num_steps= is now time_steps="),
        pytest.raises(SpecError, match="the model has no layers"),
    ):
        pn.adapt([], num_steps=T, **common)
    with pytest.warns(DeprecationWarning, match="DemoConfig.quick: num_steps= is now time_steps="):
        assert DemoConfig.quick(num_steps=7).time_steps == 7


def test_the_hand_back_line_appears_once(task, tmp_path: Path, capsys) -> None:
    """The API returns the summary and its users print it (README): the run does not print
    it too.  The command, which returns nothing to print, prints it once itself."""
    result = pn.adapt(task["spec"], train=task["drifted"], steps=2, rank=4, torch_device="cpu")
    print(result.summary())
    out = capsys.readouterr().out
    assert out.count(result.summary()) == 1, out
    np.savez(tmp_path / "drifted.npz", spikes=task["drifted"][0], labels=task["drifted"][1])
    task["spec"].save(tmp_path / "spec.npz")
    code = main([
        "adapt", "--spec", str(tmp_path / "spec.npz"), "--data", str(tmp_path / "drifted.npz"),
        "--steps", "2", "--rank", "4", "--torch-device", "cpu", "--out", str(tmp_path / "cli"),
        "--no-progress",
    ])  # fmt: skip
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())["summary"]
    assert code == 0 and out.count(summary) == 1, out


def test_an_snntorch_module_takes_its_time_steps_from_the_data() -> None:
    """`pn.adapt(model, ...)` without time_steps stopped with 'needs time_steps' although the
    data's shape says T; adapt, check and deploy now read it there (time-first too)."""
    snn = pytest.importorskip("snntorch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 6), snn.Leaky(beta=0.9, init_hidden=True),
        torch.nn.Linear(6, 3), snn.Leaky(beta=0.9, init_hidden=True, output=True),
    )  # fmt: skip
    x = (np.random.default_rng(0).random((40, 7, 8)) < 0.4).astype(np.uint8)
    y = np.arange(40) % 3
    adapted = pn.adapt(net, "torch-sim", train=(x, y), steps=1, rank=4, progress=False)
    assert adapted.spec.num_steps == 7
    report = pn.check(net, "torch-sim-fixed", x, y)
    assert report.summary().startswith("output accuracy on 40 samples: reference ")
    assert str(report).startswith("| layer | neurons |") and report.summary() in str(report)
    assert {"adapt", "check", "deploy", "watch", "NetworkSpec"} <= set(dir(pn))
    deployed = pn.deploy(net, data=(x.swapaxes(0, 1), y), time_first=True, budget=400,
                         progress=False)  # fmt: skip
    assert deployed.spec.num_steps == 7


def test_a_lava_run_adapting_the_first_layer_is_told_it_is_the_slow_case() -> None:
    """A user's drifted-only run on lava-fixed adapted lif0.v_bias at about 30 s a step and
    nothing said why; later layers, or another backend, get no note."""
    from types import SimpleNamespace

    from polystep_neuro.run.recipe import Device, _first_layer_on_lava
    from polystep_neuro.run.writable import Writable

    def device(name: str, adapted: tuple[str, ...]) -> Device:
        backend = SimpleNamespace(capabilities=SimpleNamespace(name=name))
        return Device(backend, Writable(adapted, adapted), torch.device("cpu"))  # type: ignore[arg-type]

    note = _first_layer_on_lava(device("lava-fixed", ("lif0.v_bias", "fc1.weight")))
    assert note is not None and note.startswith(
        "note: on lava-fixed, adapting layer 0 (lif0.v_bias) runs every layer for every "
        "parameter set, its slowest case"
    )
    assert _first_layer_on_lava(device("lava-fixed", ("fc1.weight", "lif1.v_bias"))) is None
    assert _first_layer_on_lava(device("torch-sim-fixed", ("lif0.v_bias",))) is None


def _evaluated(tmp_path: Path, capsys, spec_name: str, backend: str) -> str:
    """`evaluate --spec tmp_path/<spec_name>.npz` on the small data of ``_small_data``: its
    console output."""
    args = ["evaluate", "--spec", str(tmp_path / f"{spec_name}.npz"), "--data",
            str(tmp_path / "d.npz"), "--backend", backend, "--torch-device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return capsys.readouterr().out


def _small_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", spikes=(rng.random((20, 10, 6)) < 0.4).astype(np.uint8),
             labels=rng.integers(0, 3, 20))  # fmt: skip


def test_a_network_in_snntorch_timing_on_the_fixed_point_simulator_is_said(
    tmp_path: Path, capsys
) -> None:
    """torch-sim-fixed runs delay-0 layers that Lava and Loihi 2 refuse; a user took its
    figure for the chip's.  Said where it is scored; not for delay 1, nor in float32."""
    from dataclasses import replace

    spec = NetworkSpec.random([6, 8, 3], 10, seed=0)
    snn_timed = NetworkSpec([replace(layer, delay=0) for layer in spec.layers], 10).validate()
    snn_timed.save(tmp_path / "snn.npz")
    spec.save(tmp_path / "device.npz")
    _small_data(tmp_path)
    said = (
        "  note: layers 0, 1 of this network have delay 0 (snnTorch's timing): torch-sim-fixed "
        "runs it, but Lava and Loihi 2 run delay 1 only and refuse it; for what a chip runs, "
        "convert for it (polystep-neuro convert --spec FILE --out DEVICE.npz)"
    )
    for name, backend, expected in (
        ("snn", "torch-sim-fixed", True),
        ("device", "torch-sim-fixed", False),
        ("snn", "torch-sim", False),
    ):
        out = _evaluated(tmp_path, capsys, name, backend)
        assert (said in out) is expected, (name, backend)


def test_the_api_resumes_a_run_and_a_new_one_starts_its_log_afresh(task, tmp_path: Path) -> None:
    """pn.adapt had no resume=, and the same call again started at step 0 and appended to
    the earlier run's metrics.jsonl (steps 35, 36, 37, 38, 0, 1, ...)."""
    out = tmp_path / "run"

    def adapt(steps: int, **extra) -> pn.Adaptation:
        return pn.adapt(task["spec"], train=task["drifted"], steps=steps, rank=4,
                        torch_device="cpu", out_dir=out, progress=False, **extra)  # fmt: skip

    def logged() -> list[int]:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["step"] for line in lines]

    first = adapt(3)
    assert not first.interrupted and logged() == [0, 1, 2, 3]
    whole = pn.adapt(task["spec"], train=task["drifted"], steps=5, rank=4, torch_device="cpu",
                     progress=False)  # fmt: skip
    resumed = adapt(5, resume=True)
    assert logged() == [0, 1, 2, 3, 4, 5] and resumed.result.steps == 5
    for ours, theirs in zip(resumed.spec.layers, whole.spec.layers, strict=True):
        np.testing.assert_array_equal(ours.weight, theirs.weight)  # as one undisturbed run
    adapt(2)  # a new run into the same folder: its own log only
    assert logged() == [0, 1, 2]
    with pytest.raises(PolystepError, match="resume=True continues a run from its out_dir"):
        pn.adapt(task["spec"], train=task["drifted"], steps=2, resume=True)
    said = r"adapt\(\) got an unexpected option 'probe_radius'; besides .* optimizer, probe,"
    with pytest.raises(TypeError, match=said):
        pn.adapt(task["spec"], train=task["drifted"], steps=2, probe_radius=0.1)
    with pytest.raises(TypeError, match=r"'step_adapts' \(did you mean 'step_adapt'\?\)"):
        pn.adapt(task["spec"], train=task["drifted"], steps=2, step_adapts=0.1)


def test_an_interrupted_run_says_so_in_its_summary() -> None:
    from polystep_neuro.run.controller import AdaptResult

    cut = AdaptResult(NetworkSpec.random([4, 3], 4), 38, 0, True, 1.0, [], best_step=30)
    assert cut.summary().startswith(
        "interrupted after step 38 (resume continues it); handing back the network of step 30"
    )


def test_spsa_says_it_evaluates_fewer_sets_a_step(task, capsys) -> None:
    """At equal steps SPSA spent 10,240 forward passes where the others spent 2,068,480, and
    a comparison through pn.adapt did not say so."""
    pn.adapt(task["spec"], train=task["drifted"], steps=1, rank=4, optimizer="spsa",
             torch_device="cpu")  # fmt: skip
    out = capsys.readouterr().out
    assert "note: spsa evaluates 2 parameter sets a step where polystep, openai-es" in out
    pn.adapt(task["spec"], train=task["drifted"], steps=1, rank=4, torch_device="cpu")
    assert "parameter sets a step where" not in capsys.readouterr().out


def test_a_run_in_a_worker_thread_stops_on_its_event(task, tmp_path: Path) -> None:
    """A SIGINT reaches the main thread only: a pn.adapt in a worker ran to its end."""
    import threading

    stop = threading.Event()
    results: list[pn.Adaptation] = []
    worker = threading.Thread(target=lambda: results.append(pn.adapt(
        task["spec"], train=task["drifted"], steps=400, rank=4, torch_device="cpu",
        out_dir=tmp_path, progress=False, stop=stop,
    )))  # fmt: skip
    worker.start()
    stop.set()
    worker.join(120)
    assert not worker.is_alive()
    (result,) = results
    assert result.interrupted and result.result.steps < 400
    resumed = pn.adapt(task["spec"], train=task["drifted"], steps=result.result.steps + 1,
                       rank=4, torch_device="cpu", out_dir=tmp_path, progress=False,
                       resume=True)  # fmt: skip
    assert not resumed.interrupted and resumed.result.steps == result.result.steps + 1


def test_evaluate_says_the_arithmetic_it_ran_in(tmp_path: Path, capsys) -> None:
    """A user could not tell from evaluate's line that torch-sim-fixed is fixed point."""
    simulator = "PyTorch LIF simulator on CPU"
    spec = NetworkSpec.random([6, 8, 3], 10, seed=0)
    spec.save(tmp_path / "net.npz")
    _small_data(tmp_path)
    for backend, said in (("torch-sim-fixed", f"({simulator}, Loihi 2 fixed point)"),
                          ("torch-sim", f"({simulator}, float32)")):  # fmt: skip
        assert f"on {backend} {said}: accuracy" in _evaluated(tmp_path, capsys, "net", backend)
    result = pn.evaluate(spec, (np.zeros((4, 10, 6), np.float32), np.zeros(4, np.int64)),
                         "torch-sim-fixed", torch_device="cpu")  # fmt: skip
    assert str(result).endswith(
        "on 4 samples (torch-sim-fixed: PyTorch LIF simulator on CPU, Loihi 2 fixed point)"
    )
