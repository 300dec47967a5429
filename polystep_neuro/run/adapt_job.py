"""`polystep-neuro adapt`: adapt a user's own network (a NetworkSpec .npz) on a backend.

What the run is given, and what each part is for:
- training data (``--data``): what the device sees now (drifted), the adaptation stream;
- validation (``--val``, else ``--val-fraction`` of the training data held out): decides
  which network is handed back (never one less accurate on it than the start);
- replay (``--replay``): clean data mixed into the stream so clean accuracy holds; when it
  is given, a share of it joins the validation set too;
- test sets (``--test NAME=FILE``): scored at the start, along the way and at the end, never
  used to decide anything.
Without clean data the run adapts the hidden neurons' biases and the starting network's own
outputs are soft targets (``--anchor``), so adapting to drifted data alone does not forget
what the network did before (``polystep_neuro.run.writable`` and
``polystep_neuro.run.run_defaults`` say why).  The run itself is the one recipe
(:mod:`polystep_neuro.run.recipe`) the API and the demo use.

Writes ``config.json`` (at the start), ``metrics.jsonl``, ``checkpoint.pt``, ``adapted.npz``,
``summary.json`` and ``adapt.png`` into ``--out``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from devices.names import same_backend
from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import plots
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.corruptions import Corruption
from polystep_neuro.run.data import (
    Drift,
    InputShift,
    SpikeDataset,
    concat,
    encode_drifted,
    hold_out,
    load_split,
)
from polystep_neuro.run.label_free import NO_REPLAY
from polystep_neuro.run.recipe import (
    Device,
    Run,
    RunData,
    check_finished,
    prepare_data,
    run_adaptation,
)
from polystep_neuro.run.resume_files import read_saved, refuse_other_files
from polystep_neuro.run.run_defaults import RunConfig
from polystep_neuro.run.spike_layout import batch_first
from polystep_neuro.run.user_data import labels_for, read_file


@dataclass(kw_only=True)
class AdaptJob(RunConfig):
    """A :class:`RunConfig` and where the command's network and data come from."""

    spec_path: Path
    data_path: Path | None = None
    val_path: Path | None = None
    replay_path: Path | None = None
    test_paths: dict[str, Path] = field(default_factory=dict)
    time_first: bool = False
    shift_noise: float = 0.0
    shift_gain: float = 1.0
    shift_dead: float = 0.0
    corruption: str | None = None  # built-in data: a corruption of the suite instead
    label_free: bool = False  # adapt without the training data's labels (tests keep theirs)
    severity: int = 3
    dataset: str = "digits"  # the built-in data when no --data is given
    encoding: str = "rate"
    out_dir: Path = Path("runs/adapt")
    teacher_path: Path | None = None  # the trained model: its outputs replace the anchor's


def load_spike_data(
    path: Path,
    spec: NetworkSpec,
    time_first: bool = False,
    *,
    need_labels: bool = True,
    time_steps_flag: str = "convert --time-steps",
) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's data file: 'spikes' (n, T, N_in) — or (T, n, N_in) with ``time_first`` — and
    integer 'labels' (n,); no pickle.  Any unreadable file is one PolystepError.  Without
    ``need_labels`` a file may hold no 'labels' (unlabelled field data: labels None);
    ``time_steps_flag`` is what a T mismatch names (:func:`batch_first`)."""
    spikes, labels = read_file(path, need_labels)
    spikes = batch_first(spikes, spec, time_first, f"'spikes' in {path}", time_steps_flag)
    if labels is None:
        return spikes, None
    # the same checks and words as the Python API's (run.user_data)
    return spikes, labels_for(labels, spikes.shape[0], spec.n_classes, f"the labels in {path}")


def _file_data(job: AdaptJob, spec: NetworkSpec) -> RunData:
    """The user's files as datasets: the training data, its validation (``--val`` or held
    out), the replay and test sets (the recipe's ``prepare_data`` splits them)."""

    def load(path: Path, need_labels: bool = True) -> SpikeDataset:
        return _dataset(*load_spike_data(path, spec, job.time_first, need_labels=need_labels), job)

    def drifted(path: Path) -> SpikeDataset:  # without labels: a label-free run
        data = load(path, need_labels=False)
        return data.unlabelled() if job.label_free else data

    assert job.data_path is not None
    if job.label_free and job.replay_path is not None:
        raise PolystepError(NO_REPLAY)
    train = drifted(job.data_path)
    replay = None if job.replay_path is None else load(job.replay_path)
    data = prepare_data(
        train,
        job,
        validation=None if job.val_path is None else {"drifted": drifted(job.val_path)},
        replay=replay,
        test={name: load(path) for name, path in job.test_paths.items()},
    )
    trained = len(train) - (0 if job.val_path is not None else len(data.validation["drifted"]))
    data.what = f"{job.data_path} ({trained} training samples"
    data.what += f" + {len(data.stream) - trained} replay)" if replay is not None else ")"
    return data


def _builtin_data(job: AdaptJob, spec: NetworkSpec) -> RunData:
    """The built-in dataset, clean and shifted by the ``--shift-*`` flags: the stream mixes
    both (clean replay), validation and test hold both."""
    seed = job.seed
    split = load_split(job.dataset, seed)
    features = split.x_train.shape[1]
    if spec.n_in != features or spec.n_classes != 10:
        raise SpecError(
            f"this network has {spec.n_in} inputs and {spec.n_classes} classes; the built-in "
            f"{job.dataset} data needs {features} and 10 — pass your own data with --data "
            "FILE.npz"
        )
    shift: Drift = InputShift(job.shift_noise, job.shift_gain, job.shift_dead, seed=seed + 1)
    if job.corruption is not None:
        if shift.describe() != "none":
            raise PolystepError("give either --corruption or the --shift-* flags, not both")
        shift = Corruption(job.corruption, job.severity, seed=seed + 1)
    kept, held = hold_out(len(split.y_train), job.val_fraction, seed)
    x_train, y_train = split.x_train[kept], split.y_train[kept]
    x_val, y_val = split.x_train[held], split.y_train[held]

    def spikes(x: np.ndarray, y: np.ndarray | None, drift: Drift | None = None) -> SpikeDataset:
        return _dataset(encode_drifted(x, spec.num_steps, job.encoding, drift), y, job)

    if job.label_free:
        return _builtin_label_free(job, split, (kept, held), shift, spikes)
    if shift.describe() == "none":
        return RunData(
            spikes(x_train, y_train),
            {"clean": spikes(x_val, y_val)},
            {"clean": spikes(split.x_test, split.y_test)},
            has_clean=True,
            what=job.dataset,
        )
    stream = concat(spikes(x_train, y_train), spikes(x_train, y_train, shift), job.batch_size, seed)
    both = {"clean": None, "shifted": shift}
    return RunData(
        stream,
        {name: spikes(x_val, y_val, d) for name, d in both.items()},
        {name: spikes(split.x_test, split.y_test, d) for name, d in both.items()},
        has_clean=True,
        what=f"{job.dataset}, clean + input shift ({shift.describe()})",
    )


def _builtin_label_free(
    job: AdaptJob,
    split: Any,
    parts: tuple[np.ndarray, np.ndarray],
    shift: Drift,
    spikes: Callable[..., SpikeDataset],
) -> RunData:
    """``--label-free`` on the built-in data: the drifted training images alone, unlabelled
    (the field's situation), validated on a held-out drifted part without labels; the clean
    and shifted test sets keep their labels to report what the run recovered."""
    if shift.describe() == "none":
        raise PolystepError(
            "--label-free on the built-in data adapts to a drift: name one with --corruption "
            "NAME (or the --shift-* flags)"
        )
    kept, held = parts
    both = {"clean": None, "shifted": shift}
    return RunData(
        spikes(split.x_train[kept], None, shift),
        {"drifted": spikes(split.x_train[held], None, shift)},
        {name: spikes(split.x_test, split.y_test, d) for name, d in both.items()},
        has_clean=False,
        what=f"{job.dataset} under {shift.describe()}, without labels",
    )


def _dataset(spikes: np.ndarray, labels: np.ndarray | None, job: AdaptJob) -> SpikeDataset:
    return SpikeDataset(spikes, labels, job.batch_size, job.seed)


def run_adapt_job(job: AdaptJob) -> AdaptResult:
    _check_files_need_data(job)
    if job.resume:
        _resumes_the_same_files(job)
    spec = NetworkSpec.load(job.spec_path)
    data = _file_data(job, spec) if job.data_path is not None else _builtin_data(job, spec)

    def ready(adapter: Adapter, device: Device, anchor: float) -> None:
        _write_config(replace(job, writable=adapter.layout.names, anchor=anchor))
        _say(
            f"adapting {', '.join(adapter.layout.names)} ({_values(adapter.layout.dim)}) of "
            f"{job.spec_path} on {job.backend} ({device.backend.capabilities.device}) with "
            f"{job.settings.optimizer} on {data.what}"
            + _anchored(anchor, job.teacher_path, data.has_clean)
        )

    if job.teacher_path is not None:  # the trained model's outputs as the targets
        from polystep_neuro.run.teacher import taught

        data, teach = taught(job.teacher_path, data, spec, job)
        _say(f"the outputs of {job.teacher_path} on every sample are the soft targets")
        ready = _both(ready, teach)
    run = run_adaptation(spec, data, job, report=_say, on_ready=ready)
    result = check_finished(run.result, job.out_dir)
    _write_summary(job, run)
    plots.adapt_figure(job.out_dir / "adapt.png", result.history)
    _say(
        f"{result.steps} steps, {result.evaluations:,} single-sample forward passes, "
        f"{_seconds(result.wall_seconds)} adapting; network in {job.out_dir / 'adapted.npz'}, "
        "report in "
        f"{job.out_dir / 'summary.json'}"
    )
    return result


def _seconds(seconds: float) -> str:
    """The loop's wall time, to a tenth under ten seconds (a short run is not "0 s")."""
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _values(count: int) -> str:
    return "1 value" if count == 1 else f"{count:,} values"


def _anchored(anchor: float, teacher: Path | None, has_clean: bool) -> str:
    """What holds the run: the teacher's outputs in the start's place (run/teacher.py), else
    the starting network's own outputs when ``anchor`` > 0; with drifted data alone, what a
    teacher measured to cost (its outputs on drifted inputs carry the drift)."""
    if teacher is not None:
        from polystep_neuro.run.teacher import DRIFTED_ONLY_NOTE, teacher_weight

        cost = "" if has_clean else f"; {DRIFTED_ONLY_NOTE}"
        return (
            f"; anchored to the outputs of the teacher {teacher} (the trained model), not to "
            f"the starting network (weight {teacher_weight(anchor):g}){cost}"
        )
    return f"; anchored to the starting network (weight {anchor:g})" if anchor else ""


def _both(first: Any, second: Any) -> Any:
    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both


def _say(line: str) -> None:
    print(line, flush=True)


_FILE_FLAGS = {
    "spec_path": "--spec",
    "data_path": "--data",
    "val_path": "--val",
    "replay_path": "--replay",
    "test_paths": "--test",
}


def _check_files_need_data(job: AdaptJob) -> None:
    """--val, --replay and --test belong to a --data file: the built-in data brings its own
    validation, clean and test sets, so named without --data they would be ignored."""
    named = [flag for key, flag in _FILE_FLAGS.items()
             if key not in ("spec_path", "data_path") and getattr(job, key)]  # fmt: skip
    if job.data_path is None and named:
        raise PolystepError(
            f"{', '.join(named)} need --data FILE: without it the run adapts on the built-in "
            f"{job.dataset} data with its own validation, clean and test sets"
        )


def _resumes_the_same_files(job: AdaptJob) -> None:
    """--resume continues the run in ``job.out_dir`` only with the files it was started with
    (config.json records them)."""
    saved = read_saved(job.out_dir / "config.json")
    if saved is not None:
        now = {key: _jsonable(getattr(job, key)) for key in _FILE_FLAGS}
        refuse_other_files(job.out_dir, saved, now, _FILE_FLAGS)
        if bool(saved.get("label_free", False)) != job.label_free:  # another objective
            started = "with" if saved.get("label_free") else "without"
            raise PolystepError(
                f"--resume: the run in {job.out_dir} was started {started} --label-free, "
                f"which decides its objective; resume it {started} --label-free, or start a "
                "new run without --resume (or with another --out)"
            )
        if not same_backend(saved.get("backend", job.backend), job.backend):  # scored there
            raise PolystepError(
                f"--resume: the run in {job.out_dir} was started on --backend "
                f"{saved['backend']} (its start was scored there), this command names "
                f"{job.backend}; resume with --backend {saved['backend']}, or start a new run "
                "from its adapted.npz"
            )


def _write_config(job: AdaptJob) -> None:
    config = _jsonable(asdict(job))
    (job.out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_summary(job: AdaptJob, run: Run) -> None:
    result = run.result
    summary = {
        "summary": result.summary(),
        "start": result.start,
        "end": result.end,
        "best_step": result.best_step,
        "kept_start": result.kept_start,
        "adapted": list(result.adapted),
        "steps": result.steps,
        "evaluations": result.evaluations,
        "wall_seconds": result.wall_seconds,
        "anchor": run.anchor,
        "optimizer": job.settings.optimizer,
        "backend": job.backend,
    }
    path = job.out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
