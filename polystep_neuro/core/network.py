"""NetworkSpec: the neutral, numpy-only description of a feed-forward spiking network.

Every backend (torch simulator, Lava, Loihi 2, remote) builds its network from this one
description, so it must stay importable in the Lava env (Python 3.10, numpy<2, no torch).

Neuron model per layer (CUBA LIF; docs/fixed-point.md has its integer form):

    a[t] = W · s[t - delay] + bias           synaptic input (delay 0 = snnTorch, 1 = Lava)
    u[t] = (1 - du) · u[t-1] + a[t]          current
    v[t] = (1 - dv) · v[t-1] + u[t] + v_bias  voltage, spike where v > vth, then reset

The reset mode ("zero", "subtract", "none") and ``reset_delay`` follow snnTorch's meaning;
Lava/Loihi compute ``reset="zero", reset_delay=False, delay=1``.

Parameter names are ``fc{i}.weight``, ``fc{i}.bias`` (the Dense layer i) and
``lif{i}.du``, ``lif{i}.dv``, ``lif{i}.vth``, ``lif{i}.v_bias`` (its neurons).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from polystep_neuro.core.errors import SpecError

RESET_MODES = ("zero", "subtract", "none")
NEURON_KINDS = ("synaptic", "leaky")
SCALAR_PARAMS = ("du", "dv", "vth")
FORMAT_VERSION = 1
_META_KEY = "__meta__"


@dataclass
class LayerSpec:
    """One Dense layer and the LIF population it drives."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    du: float = 1.0
    dv: float = 0.0
    vth: float = 1.0
    v_bias: np.ndarray | None = None
    reset: str = "zero"
    reset_delay: bool = False
    delay: int = 1
    neuron: str = "synaptic"
    # Fixed-point calibration (chosen once per deployment, see simulators.fixed_point):
    # device activation units per float unit, and the Dense weight exponent.
    fixed_scale: float | None = None
    fixed_weight_exp: int | None = None
    # Output layer only: its neurons are ``copies`` copies of the network's classes (copy k
    # of every class, then copy k + 1) and a class counts over its copies, a readout the
    # host does (``class_counts``); the device runs every copy as a neuron of its own.
    copies: int = 1

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        if self.bias is not None:
            self.bias = np.asarray(self.bias, dtype=np.float32)
        n_out = self.weight.shape[0] if self.weight.ndim == 2 else 0
        if self.v_bias is None:
            self.v_bias = np.zeros(n_out, dtype=np.float32)
        else:
            self.v_bias = np.asarray(self.v_bias, dtype=np.float32)

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class NetworkSpec:
    """A feed-forward SNN: layers, timestep count, and what the device may change at runtime."""

    layers: list[LayerSpec]
    num_steps: int
    writable: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        self.writable = tuple(self.writable)

    def __repr__(self) -> str:
        """One line: sizes, timesteps, writable set, neuron kind and calibration (no arrays)."""
        kinds = sorted({layer.neuron for layer in self.layers})
        fixed = all(layer.fixed_scale is not None for layer in self.layers)
        delays = sorted({layer.delay for layer in self.layers})
        return (
            f"NetworkSpec({' -> '.join(map(str, self.sizes))}, T={self.num_steps}, "
            f"{'/'.join(kinds)} LIF, delay {'/'.join(map(str, delays))}, "
            f"writable=[{', '.join(self.writable)}]"
            f"{', calibrated for Loihi 2 fixed point' if fixed else ''}{self._copies_note()})"
        )

    def _copies_note(self) -> str:
        copies = self.output_copies
        if copies == 1:
            return ""
        return f", {self.n_classes} classes of {copies} output neurons each"

    # ----------------------------------------------------------------- shape facts
    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def sizes(self) -> list[int]:
        return [self.n_in] + [layer.n_out for layer in self.layers]

    @property
    def output_copies(self) -> int:
        """Output neurons per class (1: one neuron is one class)."""
        return int(self.layers[-1].copies)

    @property
    def n_classes(self) -> int:
        """The classes the readout reports: output neurons over their copies."""
        return self.n_out // self.output_copies

    def device_network(self) -> NetworkSpec:
        """The network a device runs: every output copy a neuron of its own (the readout
        that sums a class's copies stays on the host)."""
        return self if self.output_copies == 1 else self.with_readout_copies(1)

    def first_output_copy(self) -> NetworkSpec:
        """This network with one output neuron a class: the first copy of each (where the
        copies came from ``deploy``'s tie splitting, the network before it)."""
        if self.output_copies == 1:
            return self
        last, n = self.layers[-1], self.n_classes
        kept = replace(
            last,
            weight=last.weight[:n].copy(),
            bias=None if last.bias is None else last.bias[:n].copy(),
            v_bias=None if last.v_bias is None else last.v_bias[:n].copy(),
            copies=1,
        )
        return NetworkSpec([*self.layers[:-1], kept], self.num_steps, self.writable).validate()

    def with_readout_copies(self, copies: int) -> NetworkSpec:
        """The same neurons, read with ``copies`` output neurons a class (the readout only:
        ``run.output_copies.with_output_copies`` is what makes the copies)."""
        last = replace(self.layers[-1], copies=copies)
        return NetworkSpec([*self.layers[:-1], last], self.num_steps, self.writable).validate()

    @property
    def total_delay(self) -> int:
        return sum(layer.delay for layer in self.layers)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every named parameter and its shape (scalars are shape ())."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, layer in enumerate(self.layers):
            shapes[f"fc{i}.weight"] = (layer.n_out, layer.n_in)
            if layer.bias is not None:
                shapes[f"fc{i}.bias"] = (layer.n_out,)
            for name in SCALAR_PARAMS:
                shapes[f"lif{i}.{name}"] = ()
            shapes[f"lif{i}.v_bias"] = (layer.n_out,)
        return shapes

    def parameters(self) -> dict[str, np.ndarray]:
        """Every named parameter as a float32 array (scalars as 0-d arrays)."""
        out: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            out[f"fc{i}.weight"] = layer.weight
            if layer.bias is not None:
                out[f"fc{i}.bias"] = layer.bias
            for name in SCALAR_PARAMS:
                out[f"lif{i}.{name}"] = np.asarray(getattr(layer, name), dtype=np.float32)
            out[f"lif{i}.v_bias"] = layer.v_bias
        return out

    def writable_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = self.param_shapes()
        return {name: shapes[name] for name in self.writable}

    # ----------------------------------------------------------------- updates
    def with_params(self, params: Mapping[str, Any]) -> NetworkSpec:
        """A copy with the named parameters replaced (one set, not a batch)."""
        shapes = self.param_shapes()
        layers = [replace(layer) for layer in self.layers]
        for name, value in params.items():
            if name not in shapes:
                raise SpecError(_unknown_name_message(name, shapes))
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != shapes[name]:
                raise SpecError(
                    f"parameter {name!r} must have shape {shapes[name]}, got {arr.shape}"
                )
            index, attr = split_param_name(name)
            layer = layers[index]
            if attr == "weight":
                layer.weight = arr.copy()
            elif attr in ("bias", "v_bias"):
                setattr(layer, attr, arr.copy())
            else:
                setattr(layer, attr, float(arr))
        return NetworkSpec(layers, self.num_steps, self.writable).validate()

    def with_writable(self, names: Iterable[str] | str) -> NetworkSpec:
        """A copy whose device-writable set is ``names`` ("all" for every parameter)."""
        chosen = tuple(self.param_shapes()) if names == "all" else tuple(names)
        return NetworkSpec(list(self.layers), self.num_steps, chosen).validate()

    # ----------------------------------------------------------------- validation
    def validate(self) -> NetworkSpec:
        """Check shapes, ranges and names; raise SpecError saying what to fix."""
        if not isinstance(self.num_steps, (int, np.integer)) or self.num_steps < 1:
            raise SpecError(f"num_steps must be a positive integer, got {self.num_steps!r}")
        if not self.layers:
            raise SpecError("a network needs at least one layer")
        prev_out: int | None = None
        for i, layer in enumerate(self.layers):
            _validate_layer(i, layer, prev_out)
            prev_out = layer.n_out
        _validate_copies(self.layers)
        if self.num_steps <= self.total_delay:
            raise SpecError(
                f"num_steps={self.num_steps} must exceed the total synaptic delay "
                f"({self.total_delay}), or the output layer never sees the input"
            )
        shapes = self.param_shapes()
        for name in self.writable:
            if name not in shapes:
                raise SpecError("writable: " + _unknown_name_message(name, shapes))
        if len(set(self.writable)) != len(self.writable):
            raise SpecError(f"writable lists a parameter twice: {list(self.writable)}")
        return self

    def check_param_sets(self, params: Mapping[str, Any]) -> int:
        """Validate a batch of V parameter sets (each ``(V, *shape)``); return V."""
        if not params:
            return 1
        shapes = self.param_shapes()
        num_sets: int | None = None
        for name, value in params.items():
            if name not in shapes:
                raise SpecError(_unknown_name_message(name, shapes))
            if name not in self.writable:
                raise SpecError(
                    f"parameter {name!r} is not writable on the device; writable: "
                    f"{list(self.writable) or 'none'} (set NetworkSpec.writable)"
                )
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if len(shape) != len(shapes[name]) + 1 or shape[1:] != shapes[name]:
                raise SpecError(
                    f"parameter {name!r} must have shape (V, {', '.join(map(str, shapes[name]))})"
                    f" for V parameter sets, got {shape}".replace(", )", ")")
                )
            if num_sets is None:
                num_sets = shape[0]
            elif shape[0] != num_sets:
                raise SpecError(
                    f"all parameter sets must have the same V; {name!r} has {shape[0]}, "
                    f"others have {num_sets}"
                )
        assert num_sets is not None
        if num_sets < 1:
            raise SpecError("at least one parameter set (V >= 1) is needed")
        return num_sets

    def check_inputs(self, inputs: Any) -> None:
        """Inputs are ``(B, T, N_in)`` spikes with T == num_steps."""
        shape = tuple(getattr(inputs, "shape", np.shape(inputs)))
        expected = f"(B, {self.num_steps}, {self.n_in})"
        if len(shape) != 3 or shape[1] != self.num_steps or shape[2] != self.n_in:
            raise SpecError(f"inputs must have shape {expected} (batch, time, inputs), got {shape}")
        if shape[0] < 1:
            raise SpecError("inputs hold no samples (B = 0)")

    # ----------------------------------------------------------------- (de)serialisation
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able metadata and the named arrays: the .npz and wire representation."""
        layers_meta = []
        for layer in self.layers:
            layers_meta.append(
                {
                    "has_bias": layer.bias is not None,
                    "reset": layer.reset,
                    "reset_delay": bool(layer.reset_delay),
                    "delay": int(layer.delay),
                    "neuron": layer.neuron,
                    "fixed_scale": layer.fixed_scale,
                    "fixed_weight_exp": layer.fixed_weight_exp,
                }
            )
            if layer.copies != 1:  # the host's readout (a device is sent device_network())
                layers_meta[-1]["copies"] = int(layer.copies)
        meta = {
            "format": FORMAT_VERSION,
            "num_steps": int(self.num_steps),
            "writable": list(self.writable),
            "layers": layers_meta,
        }
        arrays = {
            name: np.array(a, dtype=np.float32, order="C") for name, a in self.parameters().items()
        }
        return meta, arrays

    def fingerprint(self) -> str:
        """A short hash of everything :meth:`to_arrays` holds: equal for the same network,
        so a saved run can tell whether it is resumed on the network it was started with."""
        meta, arrays = self.to_arrays()
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for name in sorted(arrays):
            digest.update(name.encode())
            digest.update(arrays[name].tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> NetworkSpec:
        try:
            if meta.get("format") != FORMAT_VERSION:
                raise SpecError(
                    f"unsupported spec format {meta.get('format')!r} (this version reads "
                    f"{FORMAT_VERSION})"
                )
            layers = []
            for i, lm in enumerate(meta["layers"]):
                layers.append(
                    LayerSpec(
                        weight=arrays[f"fc{i}.weight"],
                        bias=arrays[f"fc{i}.bias"] if lm["has_bias"] else None,
                        du=float(arrays[f"lif{i}.du"]),
                        dv=float(arrays[f"lif{i}.dv"]),
                        vth=float(arrays[f"lif{i}.vth"]),
                        v_bias=arrays[f"lif{i}.v_bias"],
                        reset=lm["reset"],
                        reset_delay=bool(lm["reset_delay"]),
                        delay=int(lm["delay"]),
                        neuron=lm["neuron"],
                        fixed_scale=lm.get("fixed_scale"),
                        fixed_weight_exp=lm.get("fixed_weight_exp"),
                        copies=lm.get("copies", 1),
                    )
                )
            spec = cls(layers, int(meta["num_steps"]), tuple(meta["writable"]))
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise SpecError(f"malformed network spec: missing or bad field {exc}") from None
        return spec.validate()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a single .npz (no pickle): arrays by parameter name + JSON metadata."""
        meta, arrays = self.to_arrays()
        with open(path, "wb") as fh:
            np.savez(fh, **{_META_KEY: np.array(json.dumps(meta))}, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NetworkSpec:
        """Read a spec saved by :meth:`save`; any other file (truncated, corrupt, a bare .npy,
        foreign metadata) is one SpecError saying so."""
        what = f"{path} is not a polystep-neuro spec (.npz saved by NetworkSpec.save)"
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise SpecError(f"{what}: it holds a single array (.npy)")
            with data:
                if _META_KEY not in data.files and _torch_saved(path, data.files):
                    raise _torch_save_error(path)
                if _META_KEY not in data.files and "spikes" in data.files:
                    raise SpecError(
                        f"{path} is a data file (it holds 'spikes'), not a network: give it "
                        "as --data, and the network as --spec (a trained snnTorch model as "
                        "--snntorch or --teacher)"
                    )
                meta = json.loads(str(data[_META_KEY]))
                arrays = {k: data[k] for k in data.files if k != _META_KEY}
        except FileNotFoundError:
            raise SpecError(f"spec file not found: {path}") from None
        except SpecError:
            raise
        except Exception as exc:  # zip, zlib, npy header and JSON errors of a damaged file
            if _torch_saved(path):  # e.g. torch.save's legacy (plain pickle) format
                raise _torch_save_error(path) from None
            if _nir_file(path):  # numpy reads HDF5 as "pickled (object) data"
                raise _nir_error(path) from None
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "pickled" in detail:  # numpy's guess for any file that is no array at all
                detail = "it is not an .npz archive (nor any array file numpy reads)"
            raise SpecError(f"{what}: {detail}") from None
        if not isinstance(meta, dict):
            raise SpecError(f"{what}: its metadata is a JSON {type(meta).__name__}, not an object")
        return cls.from_arrays(meta, arrays)

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(
        cls,
        sizes: list[int],
        num_steps: int,
        seed: int = 0,
        *,
        du: float = 1.0,
        dv: float = 0.1,
        vth: float = 1.0,
        weight_gain: float = 2.0,
        bias: bool = False,
        delay: int = 1,
        reset: str = "zero",
        reset_delay: bool = False,
        writable: Iterable[str] | str = (),
    ) -> NetworkSpec:
        """A randomly initialised network (Kaiming-like scale times ``weight_gain``)."""
        rng = np.random.default_rng(seed)
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            w = rng.normal(0.0, weight_gain / math.sqrt(n_in), size=(n_out, n_in))
            b = rng.normal(0.0, 0.1, size=n_out) if bias else None
            layers.append(
                LayerSpec(
                    weight=w,
                    bias=b,
                    du=du,
                    dv=dv,
                    vth=vth,
                    reset=reset,
                    reset_delay=reset_delay,
                    delay=delay,
                )
            )
        spec = cls(layers, num_steps)
        return spec.with_writable(writable).validate()


def split_param_name(name: str) -> tuple[int, str]:
    """``"fc1.weight"`` -> ``(1, "weight")``; ``"lif0.vth"`` -> ``(0, "vth")``."""
    prefix, attr = name.split(".")
    return int(prefix[2:] if prefix.startswith("fc") else prefix[3:]), attr


def _unknown_name_message(name: str, shapes: Mapping[str, Any]) -> str:
    return f"unknown parameter name {name!r}; this network has: {', '.join(shapes)}"


def _finite(name: str, arr: np.ndarray) -> None:
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise SpecError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def _validate_layer(i: int, layer: LayerSpec, prev_out: int | None) -> None:
    w = layer.weight
    if w.ndim != 2 or min(w.shape) < 1:
        raise SpecError(f"fc{i}.weight must be a non-empty 2-D (n_out, n_in) array, got {w.shape}")
    if prev_out is not None and layer.n_in != prev_out:
        raise SpecError(
            f"fc{i}.weight has {layer.n_in} inputs but layer {i - 1} has {prev_out} neurons"
        )
    _finite(f"fc{i}.weight", w)
    if layer.bias is not None:
        if layer.bias.shape != (layer.n_out,):
            raise SpecError(f"fc{i}.bias must have shape ({layer.n_out},), got {layer.bias.shape}")
        _finite(f"fc{i}.bias", layer.bias)
    assert layer.v_bias is not None
    if layer.v_bias.shape != (layer.n_out,):
        raise SpecError(f"lif{i}.v_bias must have shape ({layer.n_out},), got {layer.v_bias.shape}")
    _finite(f"lif{i}.v_bias", layer.v_bias)
    for name in ("du", "dv"):
        val = getattr(layer, name)
        if not (isinstance(val, (int, float, np.floating, np.integer)) and 0.0 <= val <= 1.0):
            raise SpecError(f"lif{i}.{name} must be a number in [0, 1], got {val!r}")
    if not (math.isfinite(layer.vth) and layer.vth >= 0.0):
        raise SpecError(f"lif{i}.vth must be a finite number >= 0, got {layer.vth!r}")
    if layer.reset not in RESET_MODES:
        raise SpecError(f"layer {i}: reset must be one of {RESET_MODES}, got {layer.reset!r}")
    if layer.neuron not in NEURON_KINDS:
        raise SpecError(f"layer {i}: neuron must be one of {NEURON_KINDS}, got {layer.neuron!r}")
    if layer.neuron == "leaky" and layer.du != 1.0:
        raise SpecError(f"layer {i}: a 'leaky' neuron has no current memory, so du must be 1")
    if layer.delay not in (0, 1):
        raise SpecError(
            f"layer {i}: delay must be 0 (snnTorch) or 1 (Lava/Loihi), got {layer.delay}"
        )
    if (layer.fixed_scale is None) != (layer.fixed_weight_exp is None):
        raise SpecError(f"layer {i}: fixed_scale and fixed_weight_exp must be set together")
    if layer.fixed_scale is not None and not (
        math.isfinite(layer.fixed_scale) and layer.fixed_scale > 0
    ):
        raise SpecError(f"layer {i}: fixed_scale must be > 0, got {layer.fixed_scale}")


def _validate_copies(layers: list[LayerSpec]) -> None:
    for i, layer in enumerate(layers):
        copies = layer.copies
        if not isinstance(copies, (int, np.integer)) or isinstance(copies, bool) or copies < 1:
            raise SpecError(f"layer {i}: copies must be a positive integer, got {copies!r}")
        if copies > 1 and i != len(layers) - 1:
            raise SpecError(f"layer {i}: only the output layer can hold copies of its classes")
        if layer.n_out % copies:
            raise SpecError(
                f"layer {i}: {layer.n_out} output neurons are not {copies} copies of its classes"
            )


def refuse_output_copies(spec: NetworkSpec, where: str) -> None:
    """SpecError where a format has no readout that sums a class's output copies."""
    if spec.output_copies != 1:
        raise SpecError(
            f"this network counts each class over {spec.output_copies} output neurons, a "
            f"readout {where} cannot express: export spec.device_network() (every copy an "
            f"output of its own; class c is outputs c, c + {spec.n_classes}, ...), as "
            "`polystep-neuro export` does"
        )


def class_counts(counts: Any, copies: int) -> Any:
    """Output counts (..., copies * C) of a network with output copies -> (..., C), each
    class over its copies (numpy or torch)."""
    if copies == 1:
        return counts
    shape = tuple(counts.shape)
    return counts.reshape(*shape[:-1], copies, shape[-1] // copies).sum(-2)


def network_file(path: str | os.PathLike[str], files: Iterable[str] = ()) -> str | None:
    """What network ``path`` holds when it is one ("a polystep-neuro spec", "a model saved
    with torch.save", "a NIR graph"), for a command that wanted data and got a network;
    None otherwise.  ``files``: the members of its archive, where it is one."""
    files = list(files)
    if _META_KEY in files:
        return "a polystep-neuro spec"
    if _torch_saved(path, files):
        return "a model saved with torch.save"
    if _nir_file(path):
        return "a NIR graph (or another HDF5 file)"
    return None


def _torch_saved(path: str | os.PathLike[str], files: Iterable[str] = ()) -> bool:
    """``path`` looks like a ``torch.save`` file: its zip holds ``data.pkl``, or it is named
    .pt / .pth."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    return suffix in (".pt", ".pth") or any(f.rsplit("/", 1)[-1] == "data.pkl" for f in files)


def _nir_file(path: str | os.PathLike[str]) -> bool:
    """``path`` looks like a NIR graph: named .nir, or an HDF5 file (NIR's container)."""
    if os.path.splitext(os.fspath(path))[1].lower() == ".nir":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def is_netx_file(path: str | os.PathLike[str]) -> bool:
    """An HDF5 file laid out as lava-dl's netx writes it (a ``layer`` group, no NIR ``node``)."""
    try:
        import h5py
    except ImportError:
        return False
    try:
        with h5py.File(path, "r") as fh:
            return "layer" in fh and "node" not in fh
    except (OSError, ValueError):
        return False


def _nir_error(path: str | os.PathLike[str]) -> SpecError:
    """One line for every command that reads a spec and got a NIR file instead."""
    if is_netx_file(path):
        return SpecError(
            f"{path} is a lava-dl netx network: polystep-neuro writes netx files (export --to "
            "netx) but does not read them; bring the network in as a NIR graph (--nir), an "
            "snnTorch model (--snntorch) or a spec (.npz)"
        )
    named_nir = os.path.splitext(os.fspath(path))[1].lower() == ".nir"
    what = "a NIR graph" if named_nir else "an HDF5 file (a NIR graph, or a lava-dl netx network)"
    return SpecError(
        f"{path} is {what}, not a polystep-neuro spec (.npz); convert a NIR graph first: "
        f"polystep-neuro convert --nir {path} --out net.npz (add --time-steps T, the time steps "
        "per sample of your data, if polystep-neuro export did not write it)"
    )


def _torch_save_error(path: str | os.PathLike[str]) -> SpecError:
    """One line for every command that reads a spec and got a saved torch model instead."""
    return SpecError(
        f"{path} is a model saved with torch.save, not a polystep-neuro spec (.npz); convert it "
        f"first: polystep-neuro convert --snntorch {path} --time-steps T --out net.npz (T: the "
        "time steps per sample of your data)"
    )
