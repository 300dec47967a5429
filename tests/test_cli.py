"""The `polystep-neuro` command: clear errors, Ctrl-C checkpoints, resume."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from polystep_neuro.core.network import NetworkSpec

CLI = [sys.executable, "-m", "polystep_neuro.cli"]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def _small_spec(tmp_path: Path) -> Path:
    path = tmp_path / "net.npz"
    NetworkSpec.random([64, 16, 10], 8, seed=0, writable=("fc1.weight",)).save(path)
    return path


def _one_clean_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert pattern in lines[0], lines[0]


def test_bad_spec_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_text("not a network")
    _one_clean_line(_run("adapt", "--spec", str(bad)), "is not a polystep-neuro spec")
    _one_clean_line(  # numpy's own guess ("pickled (object) data") would mislead
        _run("adapt", "--spec", str(bad)), "it is not an .npz archive (nor any array file"
    )
    _one_clean_line(_run("adapt", "--spec", str(tmp_path / "nope.npz")), "spec file not found")


def test_a_text_file_as_data_is_not_called_pickled(tmp_path: Path) -> None:
    """numpy's last guess for a file it cannot read ("contains pickled (object) data ...
    allow_pickle=") invited unpickling a data file: said plainly instead."""
    spec = _small_spec(tmp_path)
    bad = tmp_path / "data.npz"
    bad.write_text("not data")
    proc = _run("evaluate", "--spec", str(spec), "--data", str(bad))
    _one_clean_line(proc, "it is not an .npz archive (nor any array file numpy reads)")
    assert "pickle" not in proc.stderr


def test_missing_backend(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    _one_clean_line(
        _run("adapt", "--spec", str(spec), "--backend", "loihi3"), "unknown backend 'loihi3'"
    )
    _one_clean_line(
        _run("demo", "--backend", "nope", "--out", str(tmp_path / "d")), "unknown backend 'nope'"
    )


def test_unwritable_output_folder(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_clean_line(
        _run(
            "adapt",
            "--spec",
            str(spec),
            "--out",
            str(blocker / "out"),
            "--steps",
            "1",
            "--no-progress",
        ),
        "is not writable",
    )


def test_the_writable_set_is_decided_with_the_device(tmp_path: Path) -> None:
    """A network that marks nothing adapts what the device rewrites at run time, 'all' is
    every parameter the device can rewrite (fixed point keeps du of a layer with a Dense
    bias), and a parameter it cannot rewrite is one line with the cause and the fix."""
    frozen = tmp_path / "frozen.npz"
    NetworkSpec.random([64, 16, 10], 8, seed=0, bias=True).save(frozen)
    one_step = ["--steps", "1", "--rank", "4", "--no-progress", "--torch-device", "cpu"]
    proc = _run("adapt", "--spec", str(frozen), *one_step, "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["writable"] == ["fc0.weight", "lif0.v_bias", "fc1.weight", "lif1.v_bias"]
    every = [*one_step, "--writable", "all", "--out", str(tmp_path / "b")]
    proc = _run("adapt", "--spec", str(frozen), *every)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["writable"] == [
        "fc0.weight", "fc0.bias", "lif0.dv", "lif0.vth", "lif0.v_bias",
        "fc1.weight", "fc1.bias", "lif1.dv", "lif1.vth", "lif1.v_bias",
    ]  # fmt: skip
    assert NetworkSpec.load(tmp_path / "b" / "adapted.npz").writable == tuple(config["writable"])
    refused = tmp_path / "refused"
    du = ["--writable", "lif0.du", "--out", str(refused)]
    _one_clean_line(
        _run("adapt", "--spec", str(frozen), *one_step, *du),
        "the run asks to adapt lif0.du, but torch-sim-fixed cannot rewrite lif0.du of this "
        "network: layer 0 has a Dense bias (fc0.bias)",
    )
    assert not refused.exists()  # a run that fails leaves no empty folder of its own behind
    path = tmp_path / "other.npz"
    NetworkSpec.random([20, 5], 8, seed=0, writable="all").save(path)
    _one_clean_line(_run("adapt", "--spec", str(path)), "pass your own data with --data")


def test_the_old_device_flag_still_works_and_says_its_new_name(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(
        data, spikes=(rng.random((20, 8, 64)) < 0.3).astype(np.uint8), labels=np.arange(20) % 10
    )
    proc = _run("evaluate", "--spec", str(spec), "--data", str(data), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "polystep-neuro: --device is now --torch-device; --device goes in the next release"
    ]
    assert "accuracy" in proc.stdout and "on 20 samples" in proc.stdout
    assert re.search(r"accuracy \d+\.\d%, loss", proc.stdout), proc.stdout  # as other commands
    proc = _run("adapt", "--help")
    assert "--torch-device" in proc.stdout and "--device " not in proc.stdout
    # check and deploy too (argparse took check's --device for --device-spec: "spec file not
    # found: cpu")
    out = str(tmp_path / "check")
    proc = _run("check", "--spec", str(spec), "--data", str(data), "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "--device is now --torch-device" in proc.stderr


def test_bad_optimiser_settings(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    for flag, name in (("--step", "step"), ("--epsilon", "epsilon"), ("--probe", "probe")):
        proc = _run("adapt", "--spec", str(spec), flag, "0", "--out", str(tmp_path / "o"))
        _one_clean_line(proc, f"{name} must be a positive number, got 0.0")
    proc = _run("adapt", "--spec", str(spec), "--average", "2", "--out", str(tmp_path / "o"))
    _one_clean_line(proc, "average must be in [0, 1], got 2.0")
    proc = _run("adapt", "--spec", str(spec), "--resume", "--out", str(tmp_path / "none"))
    _one_clean_line(proc, "--resume: no checkpoint in")


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_saves_and_resume_matches_an_undisturbed_run(tmp_path: Path) -> None:
    spec = _small_spec(tmp_path)
    common = [
        "adapt",
        "--spec",
        str(spec),
        "--steps",
        "60",
        "--rank",
        "8",
        "--batch-size",
        "32",
        "--no-progress",
        "--shift-gain",
        "0.7",
        "--torch-device",
        "cpu",
    ]
    ref = _run(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "run"
    proc = subprocess.Popen(
        CLI + common + ["--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    stopped_at = len(metrics.read_text().splitlines())
    assert 5 <= stopped_at < 61  # the start (step 0) and the steps done

    resumed = _run(*common, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_at - 1} of 60 from {out}" in resumed.stdout
    a = NetworkSpec.load(out / "adapted.npz")
    b = NetworkSpec.load(tmp_path / "ref" / "adapted.npz")
    assert np.array_equal(a.layers[1].weight, b.layers[1].weight)
    assert len(metrics.read_text().splitlines()) == 61


def test_a_device_lost_mid_run_says_the_checkpoint_is_kept(tmp_path: Path) -> None:
    """A server that dies under `adapt` ended the command with the transport's error only:
    where this run wrote a checkpoint, the line now says --resume goes on from it (and not
    where the checkpoint is an older run's)."""
    from polystep_neuro.core.errors import DeviceUnavailable
    from polystep_neuro.run.cli import _with_resume_hint

    lost = DeviceUnavailable("device server tcp://127.0.0.1:5555 did not answer 'evaluate'")
    (tmp_path / "checkpoint.pt").write_bytes(b"old")
    assert _with_resume_hint(lost, tmp_path, time.time() + 60) is lost  # an older run's
    hinted = _with_resume_hint(lost, tmp_path, time.time() - 60)
    assert isinstance(hinted, DeviceUnavailable)
    assert str(hinted) == (
        f"{lost}; this run's last checkpoint in {tmp_path} is kept: run the same command "
        "with --resume once the device answers again"
    )


def test_bench_forwards_every_option_to_the_benchmarks() -> None:
    """`polystep-neuro bench --help` is the benchmarks' own help (it once said 'unrecognized
    arguments'), and a bad section name is the benchmarks' own argparse error."""
    proc = _run("bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: polystep-neuro bench")
    assert "--only" in proc.stdout and "--threads" in proc.stdout
    proc = _run("bench", "--only", "no-such-section")
    assert proc.returncode == 2
    assert "invalid choice: 'no-such-section'" in proc.stderr


def test_resume_with_other_data_or_spec_is_refused(tmp_path: Path, capsys) -> None:
    """--resume once continued a checkpoint made on other data (and overwrote its config);
    now it names the saved and the given file, compared as resolved paths."""
    from polystep_neuro.cli import main

    spec = NetworkSpec.random([6, 5, 3], 4, seed=0, writable="all")
    spec.save(tmp_path / "net.npz")
    rng = np.random.default_rng(0)
    for name in ("drifted", "shifted"):
        spikes = (rng.random((24, 4, 6)) < 0.4).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", spikes=spikes, labels=rng.integers(0, 3, 24))
    out = tmp_path / "run"

    def adapt(data: Path, *extra: str) -> int:
        return main(["adapt", "--spec", str(tmp_path / "net.npz"), "--data", str(data),
                     "--backend", "torch-sim", "--torch-device", "cpu", "--steps", "2",
                     "--batch-size", "8", "--out", str(out), "--no-progress", *extra])  # fmt: skip

    assert adapt(tmp_path / "drifted.npz") == 0
    capsys.readouterr()
    assert adapt(tmp_path / "shifted.npz", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"polystep-neuro: error: --resume: the run in {out} was started with --data "
        f"{tmp_path / 'drifted.npz'}, this command gives {tmp_path / 'shifted.npz'}; give the "
        "same --data, or start a new run without --resume (or with another --out)"
    )
    assert adapt(tmp_path / "drifted.npz", "--val", str(tmp_path / "shifted.npz"), "--resume") == 2
    assert "started with no --val, this command gives" in capsys.readouterr().err
    # the same file by another name resumes; a config without the field (an older run) too
    assert adapt(tmp_path / "." / "drifted.npz", "--steps", "3", "--resume") == 0
    # a saved path that names no file from here (relative to another folder) is not refused
    config = json.loads((out / "config.json").read_text())
    config["data_path"] = "from/another/folder/drifted.npz"
    (out / "config.json").write_text(json.dumps(config))
    assert adapt(tmp_path / "drifted.npz", "--steps", "3", "--resume") == 0
    config = json.loads((out / "config.json").read_text())
    del config["data_path"]
    (out / "config.json").write_text(json.dumps(config))
    assert adapt(tmp_path / "shifted.npz", "--steps", "4", "--resume") == 0
    # a new run into the same folder says it replaces the earlier one (it did so silently)
    capsys.readouterr()
    assert adapt(tmp_path / "drifted.npz") == 0
    assert (
        f"note: {out} holds an earlier run (checkpoint.pt, adapted.npz); this run replaces "
        "it (--resume continues it; another --out keeps it)" in capsys.readouterr().out
    )


def test_help_keeps_the_code_it_tells_you_to_copy_whole(monkeypatch) -> None:
    """argparse cut long words to fit: the --snntorch help's code read 's pike_grad=...'."""
    from polystep_neuro.run.cli import _parser

    monkeypatch.setenv("COLUMNS", "80")
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["convert"].format_help()
    assert "spike_grad=functools.partial(snntorch.surrogate.ATan.apply," in text


@pytest.mark.parametrize(
    ("writable", "flag", "value", "named"),
    [
        # two weight tensors searched per tensor (the rule before the joint default)
        (("fc0.weight", "fc1.weight"), "--rank-rule", "equal", "need --rank-rule equal"),
        # a weight run with heavy-ball (the rule before auto, which moves weights with Adam)
        (("fc1.weight",), "--update", "heavy-ball", "--update heavy-ball"),
        # a weight run with its costs shifted (the shaping before auto, which ranks them)
        (("fc1.weight",), "--shaping", "shift", "--shaping shift"),
    ],
)
def test_resume_names_the_setting_a_run_was_started_with(
    tmp_path: Path, writable: tuple[str, ...], flag: str, value: str, named: str
) -> None:
    # Resuming under today's default is refused in one line that names the setting; with
    # the setting the run started with it resumes.
    spec = tmp_path / "net.npz"
    NetworkSpec.random([64, 16, 10], 8, seed=0, writable=writable).save(spec)
    common = ["adapt", "--spec", str(spec), "--rank", "4", "--no-progress", "--batch-size",
              "16", "--torch-device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    first = _run(*common, "--steps", "2", flag, value)
    assert first.returncode == 0, first.stderr
    refused = _run(*common, "--steps", "3", "--resume")
    _one_clean_line(refused, named)
    resumed = _run(*common, "--steps", "3", "--resume", flag, value)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 steps" in resumed.stdout + resumed.stderr


def test_low_rank_probes_say_what_they_do_and_resume_only_as_started(
    tmp_path: Path, capsys
) -> None:
    from polystep_neuro.cli import main

    spec = tmp_path / "net.npz"
    NetworkSpec.random([64, 16, 10], 8, seed=0, writable="all").save(spec)
    common = ["adapt", "--spec", str(spec), "--rank", "4", "--no-progress", "--batch-size",
              "16", "--torch-device", "cpu", "--steps", "2"]  # fmt: skip
    floats = [*common, "--backend", "torch-sim", "--low-rank-probes"]
    assert main([*floats, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "low-rank probes: the simulator shares the first layer's product among all sets" in out
    fixed = [*common, "--backend", "torch-sim-fixed", "--low-rank-probes"]
    assert main([*fixed, "--out", str(tmp_path / "b")]) == 0
    assert "low-rank probes: torch-sim-fixed takes full weight sets" in capsys.readouterr().out
    resume = [*common, "--backend", "torch-sim", "--resume", "--out", str(tmp_path / "a")]
    code = main(resume)
    captured = capsys.readouterr()
    assert code != 0 and "low-rank probes:" not in captured.out  # nothing said of a run refused
    assert captured.err.strip() == (
        f"polystep-neuro: error: checkpoint {tmp_path / 'a' / 'checkpoint.pt'} was written by a "
        "run with low-rank probes: resume it with --low-rank-probes (low_rank_probes=True)"
    )
    code = main([*common, "--optimizer", "spsa", "--low-rank-probes", "--out", str(tmp_path / "c")])
    assert code != 0 and capsys.readouterr().err.strip() == (
        "polystep-neuro: error: low-rank probes are PolyStep's directions; spsa draws its own "
        "(drop --low-rank-probes / low_rank_probes=True, or use polystep)"
    )
    assert main([*resume, "--low-rank-probes", "--steps", "3"]) == 0
    assert "3 steps" in capsys.readouterr().out


def test_a_resume_on_another_backend_is_refused(tmp_path: Path, capsys) -> None:
    # the start was scored on the first backend: a summary on another would mix the two
    from polystep_neuro.cli import main

    spec = tmp_path / "net.npz"
    NetworkSpec.random([64, 16, 10], 8, seed=0).save(spec)
    out = tmp_path / "run"
    common = ["adapt", "--spec", str(spec), "--rank", "4", "--no-progress", "--batch-size",
              "16", "--torch-device", "cpu", "--out", str(out)]  # fmt: skip
    assert main([*common, "--steps", "2", "--backend", "torch-sim"]) == 0
    # a short run's loop time to a tenth of a second, not "0 s"
    assert re.search(r"^2 steps, [\d,]+ single-sample forward passes, \d+\.\d s adapting; ",
                     capsys.readouterr().out, flags=re.M)  # fmt: skip
    code = main([*common, "--steps", "3", "--resume", "--backend", "torch-sim-fixed"])
    assert code != 0 and capsys.readouterr().err.strip() == (
        f"polystep-neuro: error: --resume: the run in {out} was started on --backend torch-sim "
        "(its start was scored there), this command names torch-sim-fixed; resume with "
        "--backend torch-sim, or start a new run from its adapted.npz"
    )
    assert main([*common, "--steps", "3", "--resume", "--backend", "torch-sim"]) == 0


def test_files_that_go_with_data_are_refused_without_it(tmp_path: Path, capsys) -> None:
    """--val, --replay and --test were once ignored (missing files too) when the run used
    the built-in data; now they are refused in one line, before anything is written."""
    from polystep_neuro.cli import main

    NetworkSpec.random([64, 8, 10], 4, seed=0).save(tmp_path / "net.npz")
    code = main(["adapt", "--spec", str(tmp_path / "net.npz"), "--steps", "0",
                 "--test", f"foo={tmp_path / 'none.npz'}", "--replay", str(tmp_path / "r.npz"),
                 "--out", str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (
        "polystep-neuro: error: --replay, --test need --data FILE: without it the run adapts "
        "on the built-in digits data with its own validation, clean and test sets"
    )
    assert not (tmp_path / "run").exists()


def test_small_slips_name_the_fix(tmp_path: Path, capsys) -> None:
    """A backend spelt with underscores, a negative anchor and a --test without NAME= each
    give one line that says what was meant, before anything runs."""
    from polystep_neuro.cli import main

    spec = _small_spec(tmp_path)
    assert main(["evaluate", "--spec", str(spec), "--data", "x.npz",
                 "--backend", "torch_sim_fixed"]) == 2  # fmt: skip
    assert "unknown backend 'torch_sim_fixed'; did you mean 'torch-sim-fixed'?" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["adapt", "--spec", str(spec), "--anchor", "-1"])
    assert "argument --anchor: must be >= 0, got -1" in capsys.readouterr().err
    assert main(["evaluate", "--spec", str(spec), "--data", "shifted"]) == 2
    assert "data file not found: shifted (a data file is an .npz; --test takes NAME=FILE" in (
        capsys.readouterr().err
    )


def test_a_lava_backend_without_the_lava_env_fails_before_any_work(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """`demo --backend lava-fixed` without the Lava env pretrained for 15 s, then failed."""
    from devices.lava_env import ENV_VAR
    from polystep_neuro.cli import main

    # no Lava env there (patching find_lava_env itself leaked into devices.lava's import)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-lava-env"))
    started = time.monotonic()
    assert main(["demo", "--quick", "--backend", "lava-fixed", "--out", str(tmp_path)]) == 2
    assert "lava backend needs the Lava env" in capsys.readouterr().err
    assert time.monotonic() - started < 5 and not (tmp_path / "pretrain").exists()


def test_a_mistyped_flag_is_refused_by_its_command_with_the_closest_flag(capsys) -> None:
    """`adapt --time-frist` got the whole program's usage block and no hint; a backend typo
    already got "did you mean": flags get it too, under the command's own usage."""
    from polystep_neuro.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["adapt", "--spec", "net.npz", "--time-frist", "--replays", "clean.npz"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: polystep-neuro adapt ")
    assert err.rstrip().endswith(
        "polystep-neuro adapt: error: unrecognized arguments: --time-frist (did you mean "
        "--time-first?) --replays (did you mean --replay?) clean.npz"
    )
    with pytest.raises(SystemExit):
        main(["evaluate", "--spec", "net.npz", "--data", "d.npz", "--zzz"])
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: --zzz")


def test_a_backend_name_users_reach_for_is_pointed_at_what_it_means() -> None:
    """'lava-sim' got "did you mean 'lava-fixed'?" (closest by characters), where Lava's
    float simulator is 'lava'."""
    from devices.names import check_backend_name
    from polystep_neuro.core.errors import UnknownBackend

    for name, meant in (("lava-sim", "lava"), ("Loihi", "loihi2"), ("torch_simm", "torch-sim")):
        with pytest.raises(UnknownBackend, match=rf"'{name}'; did you mean '{meant}'\?"):
            check_backend_name(name)


def test_ctrl_c_before_a_run_handles_it_is_one_line_and_exit_130(monkeypatch, capsys) -> None:
    """Ctrl-C in the first seconds (torch's import, before a run's own handler) printed a
    KeyboardInterrupt traceback."""
    import polystep_neuro.run.cli as run_cli
    from polystep_neuro import cli

    def interrupted(argv: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_cli, "main", interrupted)
    assert cli.main(["devices", "list"]) == 130
    assert capsys.readouterr().err == "polystep-neuro: stopped (Ctrl-C)\n"
