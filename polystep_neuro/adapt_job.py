"""`polystep-neuro adapt`: adapt a user's own network (a NetworkSpec .npz) on a backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from devices.registry import open_backend
from polystep_neuro import plots
from polystep_neuro.controller import CHECKPOINT_NAME, Adapter, AdaptResult
from polystep_neuro.data import (
    DIGITS_CLASSES,
    DIGITS_FEATURES,
    InputShift,
    SpikeDataset,
    concat,
    load_digits_split,
    rate_encode,
)
from polystep_neuro.errors import Interrupted, PolystepError, SpecError
from polystep_neuro.losses import accuracy, make_loss
from polystep_neuro.network import NetworkSpec
from polystep_neuro.optim import PolyStep, Subspace
from polystep_neuro.params import ParamVector
from simulators import fixed_point
from simulators.torch_lif import resolve_device


@dataclass
class AdaptJob:
    spec_path: Path
    backend: str = "torch-sim-fixed"
    device: str = "auto"
    writable: tuple[str, ...] | None = None
    data_path: Path | None = None
    shift_noise: float = 0.0
    shift_gain: float = 1.0
    shift_dead: float = 0.0
    steps: int = 200
    batch_size: int = 128
    rank: int = 64
    step_radius: float = 0.2
    probe_radius: float = 0.4
    epsilon: float = 0.3
    seed: int = 0
    out_dir: Path = Path("runs/adapt")
    resume: bool = False
    progress: bool = True


def load_spike_data(path: Path, spec: NetworkSpec) -> tuple[np.ndarray, np.ndarray]:
    """A user's data file: 'spikes' (n, T, N_in) and integer 'labels' (n,), no pickle."""
    try:
        with np.load(path, allow_pickle=False) as data:
            spikes, labels = data["spikes"], data["labels"]
    except FileNotFoundError:
        raise PolystepError(f"data file not found: {path}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise PolystepError(
            f"{path} must be an .npz holding 'spikes' (n, T, N_in) and 'labels' (n,): {exc}"
        ) from None
    spec.check_inputs(spikes)
    if labels.shape != (spikes.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise PolystepError(f"'labels' must be {spikes.shape[0]} integers, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= spec.n_out:
        raise PolystepError(f"labels must lie in [0, {spec.n_out}) for this network's outputs")
    return spikes, labels


def _datasets(job: AdaptJob, spec: NetworkSpec, device: torch.device):
    """(training stream, monitor set, description)."""
    if job.data_path is not None:
        spikes, labels = load_spike_data(job.data_path, spec)
        order = np.random.default_rng(job.seed).permutation(len(labels))
        cut = max(1, int(0.8 * len(labels)))
        train = SpikeDataset(spikes[order[:cut]], labels[order[:cut]], job.batch_size, job.seed)
        held = order[cut:] if cut < len(labels) else order[:cut]
        monitor = SpikeDataset(spikes[held], labels[held], len(held))
        return train.to(device), monitor.to(device), f"{job.data_path} ({len(labels)} samples)"
    if spec.n_in != DIGITS_FEATURES or spec.n_out != DIGITS_CLASSES:
        raise SpecError(
            f"this network has {spec.n_in} inputs and {spec.n_out} outputs; the built-in digits "
            f"data needs 64 and 10 — pass your own data with --data FILE.npz"
        )
    split = load_digits_split(job.seed)
    shift = InputShift(job.shift_noise, job.shift_gain, job.shift_dead, seed=job.seed + 1)

    def encode(x: np.ndarray, y: np.ndarray) -> SpikeDataset:
        return SpikeDataset(rate_encode(x, spec.num_steps), y, job.batch_size, job.seed)

    shifted_test = encode(shift(split.x_test), split.y_test).to(device)
    if shift.describe() == "none":
        return encode(split.x_train, split.y_train).to(device), shifted_test, "digits"
    mixed = concat(
        encode(split.x_train, split.y_train),
        encode(shift(split.x_train), split.y_train),
        job.batch_size,
        job.seed,
    )
    return mixed.to(device), shifted_test, f"digits with input shift ({shift.describe()})"


def run_adapt_job(job: AdaptJob) -> AdaptResult:
    device = resolve_device(job.device)
    spec = NetworkSpec.load(job.spec_path)
    if job.writable:
        spec = spec.with_writable(job.writable)
    layout = ParamVector(spec)  # fails early when nothing is writable
    train, monitor, what = _datasets(job, spec, device)
    options = {"device": device} if job.backend.startswith("torch-sim") else {}
    backend = open_backend(job.backend, **options)
    try:
        if backend.capabilities.precision == "loihi-fixed":
            spec = fixed_point.calibrate(spec)
        backend.load(spec)
        counts = torch.as_tensor(backend.evaluate({}, monitor.spikes))
        before = float(accuracy(counts, monitor.labels.to(counts.device))[0])
        print(
            f"adapting {', '.join(layout.names)} ({layout.dim} values) of {job.spec_path} on "
            f"{job.backend} ({backend.capabilities.device}) with {what}; accuracy before "
            f"{before:.1%}",
            flush=True,
        )
        try:
            optimizer = PolyStep(
                layout.flatten(spec, device),
                step_radius=job.step_radius,
                probe_radius=job.probe_radius,
                epsilon=job.epsilon,
                subspace=Subspace(sizes=layout.sizes, rank=job.rank, absorb_interval=20),
                seed=job.seed,
            )
        except ValueError as exc:  # the optimiser names the bad argument
            raise PolystepError(f"bad optimiser setting: {exc}") from None
        adapter = Adapter(
            spec,
            backend,
            optimizer,
            make_loss("ce", spec.num_steps, scale=0.5),
            train,
            out_dir=job.out_dir,
            monitor=monitor,
            progress=job.progress,
        )
        if job.resume and (job.out_dir / CHECKPOINT_NAME).exists():
            adapter.resume()
        result = adapter.run(job.steps)
        if result.interrupted:
            raise Interrupted(
                f"interrupted after step {result.steps}; checkpoint saved in {job.out_dir}; "
                "run the same command with --resume to continue"
            )
        backend.load(result.spec)
        counts = torch.as_tensor(backend.evaluate({}, monitor.spikes))
        after = float(accuracy(counts, monitor.labels.to(counts.device))[0])
    finally:
        backend.close()
    plots.adapt_figure(job.out_dir / "adapt.png", result.history)
    print(
        f"accuracy {before:.1%} -> {after:.1%} in {result.steps} steps "
        f"({result.evaluations:,} forward passes, {result.wall_seconds:.0f} s); adapted network "
        f"in {job.out_dir / 'adapted.npz'}",
        flush=True,
    )
    return result
