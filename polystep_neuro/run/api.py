"""One call from a trained model to an adapted one: ``polystep_neuro.adapt(...)``.

The model may be an snnTorch module, a NIR graph (or a path to a ``.nir`` file) or a
:class:`~polystep_neuro.core.network.NetworkSpec`; the data are ``(spikes, labels)`` pairs of
arrays (spikes batch-first ``(n, T, N_in)``, or time-first with ``time_first=True`` as
snnTorch's ``spikegen`` makes them) or :class:`~polystep_neuro.run.data.SpikeDataset`.  The result
holds the adapted network, the run's history and the scores of the start and of the network
handed back, and goes back to snnTorch (:meth:`Adaptation.to_snntorch`,
:meth:`Adaptation.load_into`).

    import polystep_neuro as pn
    result = pn.adapt(model, "torch-sim-fixed", train=(x_drift, y_drift), num_steps=25,
                      test={"clean": (x_clean, y_clean), "shifted": (x_test, y_test)})
    print(result.summary())
    result.load_into(model)        # the adapted weights, in your own module
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError, SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.controller import Adapter, AdaptResult
from polystep_neuro.run.data import SpikeDataset, hold_out
from polystep_neuro.run.interop import device_writable
from polystep_neuro.run.optimizers import Settings
from polystep_neuro.run.run_defaults import run_defaults, writable_names

DataLike = SpikeDataset | tuple[Any, Any]
# Backends whose network runs with Lava's timing (a one-step synaptic delay).
_LAVA_TIMING = ("lava", "lava-fixed", "loihi2")


@dataclass
class Adaptation:
    """What :func:`adapt` hands back."""

    spec: NetworkSpec  # the adapted network (as the device runs it)
    start: NetworkSpec  # the network the run started from (as the device ran it)
    result: AdaptResult  # steps, forward passes, history, start / end scores
    changes: list[str]  # what was changed to fit the device's semantics (empty: nothing)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.result.history

    @property
    def before(self) -> dict[str, float]:
        return self.result.start

    @property
    def after(self) -> dict[str, float]:
        return self.result.end

    def summary(self) -> str:
        return self.result.summary()

    def to_snntorch(self) -> torch.nn.Sequential:
        """The adapted network as a new snnTorch ``nn.Sequential`` (snnTorch timing only)."""
        from polystep_neuro.run.interop.snntorch import to_snntorch

        return to_snntorch(self.spec)

    def load_into(self, model: Any) -> None:
        """Copy the adapted weights and biases into ``model`` (your own snnTorch module or its
        ``(Linear, neuron)`` pairs), layer by layer in order, whatever its attribute names:
        ``fc{i}.weight`` into the i-th ``nn.Linear``'s weight, ``fc{i}.bias`` plus
        ``lif{i}.v_bias`` into its bias (equal for snnTorch's Leaky neurons: the bias enters
        the membrane every step)."""
        from polystep_neuro.run.interop.snntorch import _layer_pairs

        pairs = _layer_pairs(model)
        if len(pairs) != len(self.spec.layers):
            raise SpecError(
                f"the model has {len(pairs)} Linear + neuron layers, the adapted network "
                f"{len(self.spec.layers)}"
            )
        for i, ((name, linear), _) in enumerate(pairs):
            layer = self.spec.layers[i]
            if tuple(linear.weight.shape) != layer.weight.shape:
                raise SpecError(
                    f"layer {name}: weight {tuple(linear.weight.shape)} vs adapted "
                    f"{layer.weight.shape}"
                )
            bias = np.asarray(layer.v_bias, dtype=np.float32)
            if layer.bias is not None:
                bias = bias + layer.bias
            if linear.bias is None and np.any(bias != 0):
                raise SpecError(
                    f"layer {name} has no bias, but the adapted network biases its neurons; "
                    "build it with nn.Linear(..., bias=True)"
                )
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(layer.weight))
                if linear.bias is not None:
                    linear.bias.copy_(torch.as_tensor(bias))


def adapt(
    model: Any,
    backend: str = "torch-sim-fixed",
    *,
    train: DataLike,
    num_steps: int | None = None,
    validation: Mapping[str, DataLike] | DataLike | None = None,
    test: Mapping[str, DataLike] | None = None,
    replay: DataLike | None = None,
    writable: tuple[str, ...] | str | None = None,
    steps: int = 300,
    batch_size: int = 128,
    optimizer: str = "polystep",
    device: str = "auto",
    time_first: bool = False,
    val_fraction: float = 0.2,
    anchor: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    seed: int = 0,
    **settings: Any,
) -> Adaptation:
    """Adapt ``model`` on ``backend`` with forward passes only; see the module docstring.

    ``train`` is what the device sees now; ``validation`` (default: ``val_fraction`` of
    ``train`` held out) decides which network is handed back; ``replay`` (clean data) is mixed
    into the stream and a share of it validates too; ``test`` sets are only reported.
    ``writable`` defaults to the model's writable set, else every weight and neuron bias (what
    the device can rewrite); without replay the run adapts only the hidden neurons' biases
    among them and the start's own outputs anchor it (``anchor``, default 2; see
    :mod:`polystep_neuro.run.run_defaults`).  ``settings`` are
    :class:`~polystep_neuro.run.optimizers.Settings` fields (probe, rank, step, ...).
    Long because its signature and docstring are the API's documentation; the body is short.
    """
    from devices.registry import backend_options, open_backend
    from simulators.torch_device import resolve_device

    spec, changes = _as_spec(model, num_steps, backend)
    names = writable_names(spec, writable)
    spec = spec.with_writable(names or spec.writable or device_writable(spec))
    chosen = run_defaults(spec, has_clean=replay is not None, writable=names, anchor=anchor)
    if chosen.note and progress:
        print(chosen.note, flush=True)
    where = resolve_device(device)

    def ds(data: DataLike) -> SpikeDataset:
        return _dataset(data, spec, batch_size, seed, time_first).to(where)

    stream = ds(train)
    if validation is None:
        kept, held = hold_out(len(stream), val_fraction, seed)
        stream, val = stream.subset(kept), {"validation": stream.subset(held)}
    elif isinstance(validation, Mapping):
        val = {k: ds(v) for k, v in validation.items()}
    else:
        val = {"validation": ds(validation)}
    if replay is not None:
        clean = ds(replay)
        kept, held = hold_out(len(clean), val_fraction, seed)
        stream = _concat(stream, clean.subset(kept), batch_size, seed)
        val["replay"] = clean.subset(held)
    dev = open_backend(backend, **backend_options(backend, device=where))
    try:
        dev.load(spec)  # a fixed-point device calibrates it (Adapter.build reads it back)
        adapter = Adapter.build(
            dev, stream, steps=steps, device=where, names=chosen.writable,
            settings=Settings(optimizer=optimizer, seed=seed, **settings),
            validation=val, test={k: ds(v) for k, v in (test or {}).items()},
            anchor_weight=chosen.anchor,
            out_dir=out_dir, progress=progress,
        )  # fmt: skip
        result = adapter.run(steps)
        start = adapter.spec
    finally:
        dev.close()
    return Adaptation(result.spec, start, result, changes)


def _as_spec(model: Any, num_steps: int | None, backend: str) -> tuple[NetworkSpec, list[str]]:
    """The model as a NetworkSpec, in the timing the backend runs (changes listed)."""
    if isinstance(model, NetworkSpec):
        spec = model
    elif isinstance(model, (str, Path)) or type(model).__module__.startswith("nir"):
        from polystep_neuro.run.interop.nir import from_nir

        spec = from_nir(model, num_steps)
    elif isinstance(model, torch.nn.Module) or isinstance(model, (list, tuple)):
        if num_steps is None:
            raise PolystepError("an snnTorch model needs num_steps (timesteps per sample)")
        from polystep_neuro.run.interop.snntorch import from_snntorch

        spec = from_snntorch(model, num_steps)
    else:
        raise PolystepError(
            f"model must be an snnTorch module, a NIR graph or file, or a NetworkSpec; got "
            f"{type(model).__name__}"
        )
    spec = spec.validate()
    if backend in _LAVA_TIMING:
        from polystep_neuro.run.interop import to_device_semantics

        return to_device_semantics(spec)
    return spec, []


def _dataset(
    data: DataLike, spec: NetworkSpec, batch_size: int, seed: int, time_first: bool
) -> SpikeDataset:
    if isinstance(data, SpikeDataset):
        return data
    try:
        spikes, labels = data
    except (TypeError, ValueError):
        raise PolystepError("data must be a SpikeDataset or a (spikes, labels) pair") from None
    spikes = np.asarray(torch.as_tensor(spikes).cpu())
    if time_first:
        spikes = np.ascontiguousarray(spikes.transpose(1, 0, 2))
    spec.check_inputs(spikes)
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
    return SpikeDataset(spikes, labels, batch_size, seed)


def _concat(a: SpikeDataset, b: SpikeDataset, batch_size: int, seed: int) -> SpikeDataset:
    from polystep_neuro.run.data import concat

    return concat(a, b, batch_size, seed).to(a.spikes.device)
