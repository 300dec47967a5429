"""The hardware-in-the-loop adaptation loop.

Per step: minibatch -> ``ask()`` V candidate parameter vectors -> ``backend.evaluate`` (the
device runs forward passes only) -> loss per candidate on the host -> ``tell()``.  Only the
device-writable parameters are stepped.  The loop shows progress, appends one JSON line of
metrics per step, checkpoints every N steps (atomically), resumes bit-identically (the
minibatch is a pure function of the step index, the optimiser's state includes its RNG,
and the backend is pure), and turns Ctrl-C into "finish this step, checkpoint, stop".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from devices.base import BaseBackend
from polystep_neuro.data import SpikeDataset
from polystep_neuro.errors import PolystepError
from polystep_neuro.losses import LossFn, accuracy
from polystep_neuro.network import NetworkSpec
from polystep_neuro.optim import PolyStep
from polystep_neuro.params import ParamVector

CHECKPOINT_NAME = "checkpoint.pt"
SPEC_NAME = "adapted.npz"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_VERSION = 1


@dataclass
class AdaptResult:
    spec: NetworkSpec  # the network with the adapted parameters
    steps: int  # completed steps (counting those before a resume)
    evaluations: int  # forward passes (parameter sets x samples) sent to the device
    interrupted: bool
    wall_seconds: float
    history: list[dict[str, Any]]


class Adapter:
    """Adapt the writable parameters of ``spec`` on ``backend`` with ``optimizer``.

    ``optimizer`` must have been created from ``layout.flatten(spec)`` (``layout`` defaults
    to ``ParamVector(spec)``: the writable parameters, unscaled).
    ``train`` yields the minibatches; ``monitor`` (optional) is evaluated with the current
    parameters every ``eval_every`` steps for the log and the progress bar.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        backend: BaseBackend,
        optimizer: PolyStep,
        loss: LossFn,
        train: SpikeDataset,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        monitor: SpikeDataset | None = None,
        checkpoint_every: int = 25,
        eval_every: int = 10,
        progress: bool = True,
        description: str = "adapt",
        on_step: Callable[[Adapter, dict[str, Any]], None] | None = None,
        layout: ParamVector | None = None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.optimizer = optimizer
        self.loss = loss
        self.train = train
        self.monitor = monitor
        self.layout = layout if layout is not None else ParamVector(spec)
        if optimizer.x.numel() != self.layout.dim:
            raise PolystepError(
                f"optimizer has {optimizer.x.numel()} parameters but the writable set "
                f"{list(self.layout.names)} has {self.layout.dim}"
            )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.eval_every = int(eval_every)
        self.progress = progress
        self.description = description
        self.on_step = on_step
        self.step = 0
        self.evaluations = 0
        # Wall time of earlier runs (restored by resume) and the start of the current one, so
        # a resumed stage reports its whole time, not just the part after the restart.
        self._wall_before = 0.0
        self._run_started: float | None = None
        self.history: list[dict[str, Any]] = []
        self._stop = threading.Event()
        if self.out_dir is not None:
            _ensure_writable_dir(self.out_dir)

    # ------------------------------------------------------------------ the loop
    def run(self, total_steps: int) -> AdaptResult:
        """Run until ``total_steps`` steps are complete (counting resumed ones)."""
        if total_steps < 0:
            raise PolystepError(f"steps must be >= 0, got {total_steps}")
        self._run_started = time.perf_counter()
        interrupted = False
        last_accuracy: float | None = None
        bar = tqdm(
            total=total_steps,
            initial=self.step,
            desc=self.description,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        with bar, self._sigint_stops_after_step():
            while self.step < total_steps:
                if self._stop.is_set():
                    interrupted = True
                    break
                record = self._one_step()
                bar.update(1)
                postfix = {"loss": f"{record['loss_min']:.3f}"}
                if "monitor_accuracy" in record:
                    last_accuracy = record["monitor_accuracy"]
                if last_accuracy is not None:
                    postfix["acc"] = f"{last_accuracy:.1%}"
                bar.set_postfix(postfix, refresh=False)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
        if self.out_dir is not None:
            self.save_checkpoint()
        self._wall_before, self._run_started = self._wall_seconds(), None
        return AdaptResult(
            spec=self.current_spec(),
            steps=self.step,
            evaluations=self.evaluations,
            interrupted=interrupted,
            wall_seconds=self._wall_before,
            history=list(self.history),
        )

    def _one_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        inputs, targets = self.train.batch(self.step)
        candidates = self.optimizer.ask()
        counts = self.backend.evaluate(self.layout.unflatten(candidates), inputs)
        counts = torch.as_tensor(counts, device=candidates.device)
        losses = self.loss(counts, targets.to(candidates.device))
        self.optimizer.tell(losses)
        self.step += 1
        self.evaluations += int(candidates.shape[0]) * int(inputs.shape[0])
        finite = losses[torch.isfinite(losses)]
        record: dict[str, Any] = {
            "step": self.step,
            "loss_min": float(finite.min()) if finite.numel() else math.nan,
            "loss_mean": float(finite.mean()) if finite.numel() else math.nan,
            "candidates": int(candidates.shape[0]),
            "evaluations": self.evaluations,
            "step_seconds": round(time.perf_counter() - t0, 4),
        }
        if self.monitor is not None and self.eval_every and self.step % self.eval_every == 0:
            record.update(self.evaluate_current(self.monitor))
        self.history.append(record)
        self._log(record)
        if self.on_step is not None:
            self.on_step(self, record)
        return record

    def evaluate_current(self, data: SpikeDataset) -> dict[str, float]:
        """Loss and accuracy of the current parameters on all of ``data``."""
        params = self.layout.unflatten(self.optimizer.x.reshape(1, -1))
        counts = torch.as_tensor(self.backend.evaluate(params, data.spikes))
        labels = data.labels.to(counts.device)
        return {
            "monitor_loss": float(self.loss(counts, labels)[0]),
            "monitor_accuracy": float(accuracy(counts, labels)[0]),
        }

    def current_spec(self) -> NetworkSpec:
        return self.layout.to_spec(self.spec, self.optimizer.x)

    def request_stop(self) -> None:
        """Finish the step in flight, checkpoint, and return from ``run``."""
        self._stop.set()

    # ------------------------------------------------------------------ persistence
    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        with open(self.out_dir / METRICS_NAME, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def _wall_seconds(self) -> float:
        running = 0.0 if self._run_started is None else time.perf_counter() - self._run_started
        return self._wall_before + running

    def save_checkpoint(self) -> Path | None:
        """Write the optimiser state, step and adapted spec atomically into ``out_dir``."""
        if self.out_dir is None:
            return None
        state = {
            "version": _CHECKPOINT_VERSION,
            "step": self.step,
            "evaluations": self.evaluations,
            "wall_seconds": self._wall_seconds(),
            "names": list(self.layout.names),
            "scales": list(self.layout.scales),
            "optimizer": self.optimizer.state_dict(),
        }
        path = self.out_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        spec_tmp = self.out_dir / (SPEC_NAME + ".tmp")
        self.current_spec().save(spec_tmp)
        os.replace(spec_tmp, self.out_dir / SPEC_NAME)
        return path

    def resume(self, path: str | os.PathLike[str] | None = None) -> int:
        """Load a checkpoint (default: ``out_dir``'s); returns the step it continues from."""
        if path is None:
            if self.out_dir is None:
                raise PolystepError("resume needs a checkpoint path or an out_dir")
            path = self.out_dir / CHECKPOINT_NAME
        path = Path(path)
        if path.is_dir():
            path = path / CHECKPOINT_NAME
        if not path.exists():
            raise PolystepError(f"no checkpoint to resume from at {path}")
        try:
            state = torch.load(path, map_location=self.optimizer.device, weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise PolystepError(f"cannot read checkpoint {path}: {exc}") from None
        if state.get("version") != _CHECKPOINT_VERSION:
            raise PolystepError(f"checkpoint {path} has unsupported version {state.get('version')}")
        if state.get("names") != list(self.layout.names):
            raise PolystepError(
                f"checkpoint {path} adapts {state.get('names')}, but this run adapts "
                f"{list(self.layout.names)}"
            )
        if state.get("scales") != list(self.layout.scales):
            raise PolystepError(
                f"checkpoint {path} was written with parameter scales {state.get('scales')}, "
                f"this run uses {list(self.layout.scales)} (different scaling or spec)"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.evaluations = int(state["evaluations"])
        self._wall_before = float(state.get("wall_seconds", 0.0))
        self._truncate_log(self.step)
        return self.step

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed log has no duplicates."""
        if self.out_dir is None or not (self.out_dir / METRICS_NAME).exists():
            return
        log = self.out_dir / METRICS_NAME
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
        log.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self.history = [json.loads(k) for k in kept]

    # ------------------------------------------------------------------ Ctrl-C
    @contextlib.contextmanager
    def _sigint_stops_after_step(self) -> Iterator[None]:
        """First Ctrl-C: finish the step, checkpoint, stop.  Second: abort at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt
            self._stop.set()
            tqdm.write(
                "interrupted: finishing this step and saving a checkpoint "
                "(Ctrl-C again to abort without saving)"
            )

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _ensure_writable_dir(path: Path) -> None:
    """Create ``path`` or fail now with a clear message, not after an hour of adapting."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PolystepError(
            f"output folder {path} is not writable: {exc.strerror or exc}"
        ) from None
