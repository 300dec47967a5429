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
what the network did before (``polystep_neuro.run.run_defaults`` says why and what it measured).

Writes ``config.json`` (at the start), ``metrics.jsonl``, ``checkpoint.pt``, ``adapted.npz``,
``summary.json`` and ``adapt.png`` into ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devices.registry import backend_options, open_backend
from polystep_neuro.core.errors import Interrupted, PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run import plots
from polystep_neuro.run.controller import CHECKPOINT_NAME, Adapter, AdaptResult, ensure_writable_dir
from polystep_neuro.run.data import InputShift, SpikeDataset, concat, encode, hold_out, load_split
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.run_defaults import run_defaults, writable_names
from simulators.torch_device import resolve_device


@dataclass
class AdaptJob:
    spec_path: Path
    backend: str = "torch-sim-fixed"
    device: str = "auto"
    writable: tuple[str, ...] | None = None  # None: see polystep_neuro.run.run_defaults
    data_path: Path | None = None
    val_path: Path | None = None
    replay_path: Path | None = None
    test_paths: dict[str, Path] = field(default_factory=dict)
    val_fraction: float = 0.2
    time_first: bool = False
    anchor: float | None = None  # None: see polystep_neuro.run.run_defaults
    trust_radius: float | None = None
    shift_noise: float = 0.0
    shift_gain: float = 1.0
    shift_dead: float = 0.0
    dataset: str = "digits"  # the built-in data when no --data is given
    encoding: str = "rate"
    steps: int = 300
    batch_size: int = 128
    settings: Settings = field(default_factory=Settings)
    timeout_s: float | None = None
    out_dir: Path = Path("runs/adapt")
    resume: bool = False
    progress: bool = True


def load_spike_data(
    path: Path, spec: NetworkSpec, time_first: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A user's data file: 'spikes' (n, T, N_in) — or (T, n, N_in) with ``time_first`` — and
    integer 'labels' (n,); no pickle.  Any unreadable file is one PolystepError."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise PolystepError(
                f"{path} is a single .npy array; save an .npz with np.savez(path, "
                "spikes=..., labels=...)"
            )
        with data:
            spikes, labels = data["spikes"], data["labels"]
    except FileNotFoundError:
        raise PolystepError(f"data file not found: {path}") from None
    except PolystepError:
        raise
    except Exception as exc:  # zip, zlib, npy header errors of a damaged file
        raise PolystepError(
            f"{path} must be an .npz holding 'spikes' (n, T, N_in) and 'labels' (n,): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    if not np.issubdtype(spikes.dtype, np.number) or not np.issubdtype(labels.dtype, np.number):
        raise PolystepError(f"{path}: 'spikes' and 'labels' must be numeric arrays")
    if time_first:
        if spikes.ndim != 3:
            raise PolystepError(f"'spikes' in {path} must be 3-D, got shape {spikes.shape}")
        spikes = np.ascontiguousarray(spikes.transpose(1, 0, 2))
    _check_shape(path, spikes, spec, time_first)
    if labels.shape != (spikes.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise PolystepError(
            f"'labels' in {path} must be {spikes.shape[0]} integers, got {labels.dtype} "
            f"{labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= spec.n_out:
        raise PolystepError(f"labels in {path} must lie in [0, {spec.n_out}) for this network")
    return spikes, labels


def _check_shape(path: Path, spikes: np.ndarray, spec: NetworkSpec, time_first: bool) -> None:
    try:
        spec.check_inputs(spikes)
    except SpecError as exc:
        shape, t = spikes.shape, spec.num_steps
        # T where the batch should be: the other layout than the one --time-first says
        other_layout = spikes.ndim == 3 and shape[0] == t and shape[1] != t
        if other_layout and time_first:
            raise PolystepError(
                f"'spikes' in {path} is {(shape[1], shape[0], shape[2])} in the file: that is "
                f"already batch-first (n, T, N_in) for this network (T={t}); drop --time-first"
            ) from None
        if other_layout:
            hint = (
                " — it looks time-first (T, n, N_in), as snnTorch's spikegen makes it; "
                "pass --time-first"
            )
        elif spikes.ndim == 3 and shape[1] != t and shape[2] == spec.n_in:
            hint = f" — the network runs {t} time steps per sample (convert --num-steps sets it)"
        else:
            hint = ""
        raise PolystepError(f"'spikes' in {path}: {exc}{hint}") from None


@dataclass
class JobData:
    """Everything the run reads, as datasets."""

    stream: SpikeDataset
    validation: dict[str, SpikeDataset]
    test: dict[str, SpikeDataset]
    what: str


def _split(
    spikes: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(kept, held out) arrays by ``data.hold_out``."""
    kept, held = hold_out(len(labels), fraction, seed)
    return (spikes[kept], labels[kept]), (spikes[held], labels[held])


def _file_data(job: AdaptJob, spec: NetworkSpec) -> JobData:
    def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
        return load_spike_data(path, spec, job.time_first)

    assert job.data_path is not None
    train = load(job.data_path)
    validation: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if job.val_path is not None:
        validation["drifted"] = load(job.val_path)
    else:
        train, validation["drifted"] = _split(*train, job.val_fraction, job.settings.seed)
    parts = [train]
    if job.replay_path is not None:
        replay, validation["replay"] = _split(
            *load(job.replay_path), job.val_fraction, job.settings.seed
        )
        parts.append(replay)
    stream = _dataset(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), job
    )
    what = f"{job.data_path} ({len(train[1])} training samples"
    what += f" + {len(parts[1][1])} replay)" if len(parts) > 1 else ")"
    return JobData(
        stream,
        {name: _dataset(*value, job) for name, value in validation.items()},
        {name: _dataset(*load(path), job) for name, path in job.test_paths.items()},
        what,
    )


def _builtin_data(job: AdaptJob, spec: NetworkSpec) -> JobData:
    """The built-in dataset, clean and shifted by the ``--shift-*`` flags: the stream mixes
    both (clean replay), validation and test hold both."""
    seed = job.settings.seed
    split = load_split(job.dataset, seed)
    features = split.x_train.shape[1]
    if spec.n_in != features or spec.n_out != 10:
        raise SpecError(
            f"this network has {spec.n_in} inputs and {spec.n_out} outputs; the built-in "
            f"{job.dataset} data needs {features} and 10 — pass your own data with --data "
            "FILE.npz"
        )
    shift = InputShift(job.shift_noise, job.shift_gain, job.shift_dead, seed=seed + 1)
    (x_train, y_train), (x_val, y_val) = _split(
        split.x_train, split.y_train, job.val_fraction, seed
    )

    def spikes(x: np.ndarray, y: np.ndarray) -> SpikeDataset:
        return _dataset(encode(x, spec.num_steps, job.encoding), y, job)

    if shift.describe() == "none":
        return JobData(
            spikes(x_train, y_train),
            {"clean": spikes(x_val, y_val)},
            {"clean": spikes(split.x_test, split.y_test)},
            job.dataset,
        )
    stream = concat(spikes(x_train, y_train), spikes(shift(x_train), y_train), job.batch_size, seed)
    both = {"clean": lambda x: x, "shifted": shift}
    return JobData(
        stream,
        {name: spikes(f(x_val), y_val) for name, f in both.items()},
        {name: spikes(f(split.x_test), split.y_test) for name, f in both.items()},
        f"{job.dataset}, clean + input shift ({shift.describe()})",
    )


def _dataset(spikes: np.ndarray, labels: np.ndarray, job: AdaptJob) -> SpikeDataset:
    return SpikeDataset(spikes, labels, job.batch_size, job.settings.seed)


def _open(job: AdaptJob, device: torch.device) -> Any:
    options = backend_options(job.backend, device=device, timeout_s=job.timeout_s)
    return open_backend(job.backend, **options)


def run_adapt_job(job: AdaptJob) -> AdaptResult:
    device = resolve_device(job.device)
    spec = NetworkSpec.load(job.spec_path)
    writable = writable_names(spec, job.writable)
    if writable:
        spec = spec.with_writable(writable)
    if not spec.writable:
        raise SpecError(
            f"nothing to adapt: {job.spec_path} marks no parameter writable; pass --writable "
            "(e.g. fc1.weight lif1.v_bias) or convert with `polystep-neuro convert`"
        )
    data = _file_data(job, spec) if job.data_path is not None else _builtin_data(job, spec)
    has_clean = job.replay_path is not None or "clean" in data.validation
    chosen = run_defaults(spec, has_clean=has_clean, writable=writable, anchor=job.anchor)
    anchor = chosen.anchor  # the spec keeps its writable set; the run adapts chosen.writable
    if chosen.note:
        _say(chosen.note)
    _write_config(replace(job, writable=chosen.writable), anchor)
    backend = _open(job, device)
    try:
        backend.load(spec)  # a fixed-point device calibrates it (Adapter.build reads it back)
        adapter = Adapter.build(
            backend, data.stream.to(device), steps=job.steps, settings=job.settings,
            device=device, names=chosen.writable,
            validation={k: v.to(device) for k, v in data.validation.items()},
            test={k: v.to(device) for k, v in data.test.items()}, anchor_weight=anchor,
            trust_radius=job.trust_radius,
            out_dir=job.out_dir, progress=job.progress, report=_say,
        )  # fmt: skip
        _say(
            f"adapting {', '.join(adapter.layout.names)} ({adapter.layout.dim} values) of "
            f"{job.spec_path} on {job.backend} ({backend.capabilities.device}) with "
            f"{job.settings.optimizer} on {data.what}"
            + (f"; anchored to the starting network (weight {anchor:g})" if anchor else "")
        )
        if job.resume:
            if not (job.out_dir / CHECKPOINT_NAME).exists():
                raise PolystepError(
                    f"--resume: no checkpoint in {job.out_dir}; run without --resume to start"
                )
            adapter.resume()
        result = adapter.run(job.steps)
    finally:
        backend.close()
    if result.interrupted:
        raise Interrupted(
            f"interrupted after step {result.steps}; checkpoint saved in {job.out_dir}; "
            "run the same command with --resume to continue"
        )
    _write_summary(job, result, anchor)
    plots.adapt_figure(job.out_dir / "adapt.png", result.history)
    _say(
        f"{result.steps} steps, {result.evaluations:,} single-sample forward passes, "
        f"{result.wall_seconds:.0f} s; network in {job.out_dir / 'adapted.npz'}, report in "
        f"{job.out_dir / 'summary.json'}"
    )
    return result


def _say(line: str) -> None:
    print(line, flush=True)


def _write_config(job: AdaptJob, anchor: float) -> None:
    ensure_writable_dir(job.out_dir)
    config = _jsonable(asdict(replace(job, anchor=anchor)))
    (job.out_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _write_summary(job: AdaptJob, result: AdaptResult, anchor: float) -> None:
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
        "anchor": anchor,
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
