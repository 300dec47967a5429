"""The trained model as the reference a deployment is measured against and recovered towards.

A user's model arrives as an snnTorch module (in memory or a ``torch.save`` file), a NIR
graph (or file) or a NetworkSpec.  :class:`Reference` holds it with the semantics of the
tool it came from (snnTorch's resets and zero delay; NIR's zero reset), runs it on the host
in float32 (the snnTorch module itself where there is one, so per-neuron values that a spec
cannot hold are honoured), and says what the import had to map (:attr:`Reference.notes`).
``parity`` compares it layer by layer with a device; ``teacher`` uses its outputs as soft
targets when the device network is adapted back towards it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.interop import Change, for_backend

# Samples the host runs through the reference at once (bounds its memory on large sets).
REFERENCE_CHUNK = 1024
# From this share of samples without a single output spike on, a report says why its
# accuracies mean nothing (a model read out by its membrane potential, not by spikes).
SILENT_SHARE = 0.5
# From this share on, deploy stops: a model that answers almost nothing gives no targets to
# recover towards (the usual cause is a reading of the model that is not the model's own).
REFUSE_SILENT = 0.9
# Why a NIR graph from another tool can read silent (docs/interop.md, per tool).
_NIR_SILENT = (
    "; for a NIR graph, check first the dt it was read at (a graph that names none is read "
    "at 1e-4 s; --dt / dt= sets it) and the input gain its exporter wrote (Norse's LIFCell "
    "writes w_in = 1 where its own arithmetic adds the input unscaled, w_in = tau_syn/dt in "
    "NIR's terms): docs/interop.md"
)


def silent_outputs(counts: np.ndarray) -> float:
    """The share of samples (rows of output ``counts``) on which no output neuron spiked."""
    return float((np.asarray(counts).sum(axis=1) == 0).mean()) if len(counts) else 0.0


def silent_note(share: float, label: str = "") -> str | None:
    """What a report says when the trained model's output layer stays silent (None: it
    spikes on most samples); ``label`` (the Reference's) adds what to check for a NIR graph."""
    if share < SILENT_SHARE:
        return None
    return (
        f"the trained model's output layer fired no spike on {share:.0%} of the samples: a "
        "device decides by output spike counts, so a model read out by its membrane "
        "potential (or whose output neurons never reach their threshold) scores near 0 % "
        "here; train the output layer to spike (e.g. "
        "snntorch.functional.ce_rate_loss or ce_count_loss) and deploy that model"
        + (_NIR_SILENT if "NIR graph" in label else "")
    )


def refuse_silent(share: float, label: str = "") -> None:
    """PolystepError when the trained model answers (almost) nothing: nothing to deploy
    towards."""
    if share >= REFUSE_SILENT:
        note = silent_note(share, label)
        raise PolystepError(f"nothing to deploy towards: {note}")


@dataclass
class Reference:
    """A trained network as its own tool computes it."""

    spec: NetworkSpec  # in the source tool's semantics (float32, delay 0 for snnTorch)
    label: str  # where it came from, for reports ("snnTorch model model.pt", ...)
    module: Any = None  # the snnTorch module itself, when there is one
    notes: list[Change] = field(default_factory=list)  # what reading it had to map

    @property
    def num_steps(self) -> int:
        return self.spec.num_steps

    def for_backend(
        self, backend: str, capabilities: Any = None
    ) -> tuple[NetworkSpec, list[Change]]:
        """The network ``backend`` runs, and everything that differs from this reference
        (the import's own mappings first)."""
        spec, changes = for_backend(self.spec, backend, capabilities)
        return spec, [*self.notes, *changes]

    def spikes(self, inputs: Any) -> list[np.ndarray]:
        """Every layer's spike trains ``(B, T, N)`` (uint8) on ``inputs`` ``(B, T, N_in)``."""
        return [np.concatenate(parts) for parts in zip(*self._chunks(inputs), strict=True)]

    def counts(self, inputs: Any, steps: int | None = None) -> np.ndarray:
        """Output spike counts ``(B, N_out)`` (int32) on ``inputs`` ``(B, T, N_in)``, over the
        first ``steps`` steps (default: all)."""
        return self.spikes(inputs)[-1][:, :steps].sum(axis=1, dtype=np.int32)

    def window(self, device: NetworkSpec) -> int:
        """The steps of this network's output that ``device`` reproduces: its layers pass
        spikes on later (one step each on Lava), so over its ``num_steps`` it answers to the
        inputs of the first ``num_steps`` minus the extra delay."""
        lag = device.total_delay - self.spec.total_delay
        return max(1, self.spec.num_steps - max(lag, 0))

    def _chunks(self, inputs: Any) -> list[list[np.ndarray]]:
        x = np.asarray(torch.as_tensor(inputs).cpu())
        self.spec.check_inputs(x)
        return [self._record(x[i : i + REFERENCE_CHUNK]) for i in range(0, len(x), REFERENCE_CHUNK)]

    def _record(self, x: np.ndarray) -> list[np.ndarray]:
        if self.module is not None:
            from polystep_neuro.run.interop.snntorch import record_snntorch

            spikes = record_snntorch(self.module, x).spikes
            return [s.detach().cpu().numpy().astype(np.uint8) for s in spikes]
        from simulators.torch_lif import TorchLIF

        result = TorchLIF(self.spec, "float32", "cpu").evaluate({}, x, record=True)
        assert result.spikes is not None
        return [s[0].numpy().astype(np.uint8) for s in result.spikes]


def as_reference(model: Any, time_steps: int | None = None, dt: float | None = None) -> Reference:
    """A Reference from an snnTorch module (or ``(Linear, neuron)`` pairs), a NIR graph, a
    ``.nir`` / ``.npz`` / ``.pt`` path, or a NetworkSpec."""
    if isinstance(model, Reference):
        return model
    if isinstance(model, NetworkSpec):
        return Reference(model.validate(), "the given NetworkSpec")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix == ".npz":
            return Reference(NetworkSpec.load(path), f"spec {path}")
        if path.suffix in (".pt", ".pth"):
            return snntorch_reference(load_snntorch_module(path), time_steps, f"snnTorch {path}")
        return nir_reference(path, time_steps, dt)
    if type(model).__module__.startswith("nir"):
        return nir_reference(model, time_steps, dt)
    if isinstance(model, (torch.nn.Module, list, tuple)):
        return snntorch_reference(model, time_steps, "the snnTorch model")
    raise PolystepError(
        f"model must be an snnTorch module, a NIR graph or file, a spec .npz or a NetworkSpec; "
        f"got {type(model).__name__}"
    )


def snntorch_reference(model: Any, time_steps: int | None, label: str) -> Reference:
    if time_steps is None:
        raise PolystepError("an snnTorch model needs time_steps (time steps per sample)")
    from polystep_neuro.run.interop.snntorch import snntorch_spec

    spec, notes = snntorch_spec(model, time_steps)
    return Reference(spec, label, module=model, notes=notes)


def nir_reference(graph: Any, time_steps: int | None, dt: float | None = None) -> Reference:
    from polystep_neuro.run.interop.nir import from_nir

    label = f"NIR graph {graph}" if isinstance(graph, (str, os.PathLike)) else "the NIR graph"
    return Reference(from_nir(graph, time_steps, dt=dt), label)


def load_snntorch_module(path: Path) -> Any:
    """``torch.load`` of a whole module saved with ``torch.save(model)``.  This runs Python's
    pickle, which executes whatever code the file holds: only for files the user names."""
    if not path.is_file():
        raise SpecError(f"snnTorch model file not found: {path}")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a saved module"
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise SpecError(
            f"{path} is not a model saved with torch.save(model): {type(exc).__name__}: {detail}"
        ) from None
    if isinstance(model, dict):
        raise SpecError(
            f"{path} holds a dict (a state_dict?), not a whole module; save the model itself "
            f"with torch.save(model, path)"
        )
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"{path} holds a {type(model).__name__}, not a torch nn.Module")
    return model
