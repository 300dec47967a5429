"""NIR graphs <-> NetworkSpec: feed-forward chains of Affine/Linear + LIF/CubaLIF.

NIR (the Neuromorphic Intermediate Representation, the ``nir`` package) describes neurons by
continuous-time ODEs; a NetworkSpec is the discrete-time model of
:mod:`polystep_neuro.core.network`.  The two are tied together by one time step ``dt`` and
forward-Euler discretisation, the convention snnTorch's own NIR exporter and importer use:

    NIR LIF(tau, r, v_leak, v_threshold, v_reset)           spec neuron="leaky", du = 1
        dv     = dt / tau
        v_bias = dv * v_leak
        input gain dt * r / tau (must be 1: r = tau / dt)
    NIR CubaLIF(tau_syn, tau_mem, r, w_in, v_leak, ...)      spec neuron="synaptic"
        du = dt / tau_syn,  dv = dt / tau_mem,  v_bias = dv * v_leak
        input gain (dt * w_in / tau_syn) * (dt * r / tau_mem) (1: w_in = tau_syn/dt, r = tau_mem/dt)
    v_threshold -> vth;  v_reset must be 0 -> reset="zero", reset_delay=False
    to_nir of a LIF layer (du = 1) with a v_bias: Affine bias = fc bias + v_bias, v_leak = 0
        (with the unit input gain a voltage bias is an input bias; snnTorch and Sinabs
        refuse a non-zero v_leak).  A CubaLIF layer keeps v_leak: its Affine bias would
        pass through the synaptic current, which is not the same.
    Affine(weight, bias) / Linear(weight) -> fc{i}.weight / fc{i}.bias
    Delay(delay = dt) just before the Affine/Linear -> delay=1; no Delay -> delay=0

``dt`` is not part of a NIR graph.  ``from_nir`` uses, in order: the ``dt`` argument, the
graph's ``metadata["dt"]`` (written by :func:`to_nir`), then :data:`DEFAULT_DT` = 1e-4 s,
the value snnTorch 1.0's exporter and importer hard-code.  Time constants shorter than
``dt`` (a decay above 1) are refused.

NIR edges carry no delay, so a layer without a Delay node integrates its Affine's output of
the same step (snnTorch's timing, ``delay=0``); Lava/Loihi's one-step Dense delay
(``delay=1``) is written as a ``Delay`` node of ``dt`` on the layer's input side, which keeps
an Affine's bias undelayed, as the spec computes it.

Exactness.  ``to_nir`` writes weights as the spec's float32 arrays and neuron parameters as
float64 values computed from the float32 ones; ``from_nir`` rounds decays, threshold and
biases back to float32, so spec -> NIR -> spec is bit-identical (a v_bias moved into an
Affine bias is kept in the neuron node's metadata too, ``polystep_v_bias`` and
``polystep_fc_bias``, so the split comes back exactly).  An input gain within
``GAIN_RTOL`` of 1 counts as 1 (float32 exporters such as snnTorch's are 1 only to a few
ulps); a different gain is folded into the layer's weights and bias (each row scaled by its
neuron's gain, rounded to float32): exact in real arithmetic, not bit for bit.

What a NIR graph cannot say and a spec can (``to_nir`` raises ``SpecError``): ``reset=
"subtract"``/``"none"`` and ``reset_delay=True`` (NIR neurons reset to ``v_reset`` in the
spiking step), ``du = 0`` or ``dv = 0`` (an infinite time constant needs an infinite
``w_in``/``r``).  The fixed-point calibration (``fixed_scale``, ``fixed_weight_exp``) is kept in
the neuron nodes' metadata, and ``num_steps`` and ``writable`` in the graph's metadata, for a
lossless round trip; other NIR tools ignore them.

What a spec cannot say and a NIR graph can (``from_nir`` raises ``SpecError``): recurrent
edges and nested graphs (snnTorch writes RLeaky/RSynaptic as subgraphs), branches and merges,
node types other than Input, Output, Affine, Linear, Delay, LIF, CubaLIF and a Flatten right
after the Input, per-neuron time constants or thresholds, a non-zero ``v_reset``, delays other
than 0 or one ``dt``, and weights that are not 2-D matrices.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

try:
    import nir
except ImportError as exc:  # an optional dependency
    raise ImportError(
        "polystep_neuro.run.interop.nir needs nir: pip install 'polystep-neuro[nir]'"
    ) from exc

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec, refuse_output_copies

# The oldest nir whose nodes take what this module writes (LIF's v_reset, ...): pip may
# install an older one beside another tool (`pip install sinabs` brings nir 1.0.4).
NIR_AT_LEAST = (1, 0, 8)


def _nir_version_problem(version: str) -> str | None:
    """Why the installed nir cannot serve (None: it can)."""
    try:
        parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3])
    except ValueError:
        return None  # a development build: let it try
    if parts >= NIR_AT_LEAST:
        return None
    need = ".".join(map(str, NIR_AT_LEAST))
    return (
        f"nir {version} is installed and polystep-neuro needs nir>={need},<2 (another "
        f"package's install may have replaced it: sinabs pins an older one): pip install "
        f"'nir>={need},<2' (and install such a package with --no-deps)"
    )


def require_nir_version() -> None:
    """SpecError naming the fix when the installed nir is too old to read or write graphs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        problem = _nir_version_problem(version("nir"))
    except PackageNotFoundError:
        return
    if problem is not None:
        raise SpecError(problem)


__all__ = ["DEFAULT_DT", "GAIN_RTOL", "from_nir", "read_nir", "to_nir", "write_nir"]

DEFAULT_DT = 1e-4  # seconds; what snnTorch's NIR exporter and importer assume
GAIN_RTOL = 1e-5
SUPPORTED_NODES = "Input, Output, Affine, Linear, Delay, LIF, CubaLIF (and a Flatten after Input)"
_META_SCALE = "polystep_fixed_scale"
_META_EXP = "polystep_fixed_weight_exp"
_META_STEPS = "polystep_num_steps"
_META_WRITABLE = "polystep_writable"
# A deployed network's output copies (every copy an output of its own in the graph, which
# has no readout that sums them); from_nir restores the host's readout from it.
_META_COPIES = "polystep_output_copies"
_META_V_BIAS = "polystep_v_bias"  # the spec's v_bias, moved into the Affine's bias
_META_FC_BIAS = "polystep_fc_bias"  # the spec's own Dense bias beside it
_WEIGHT_NODES = (nir.Affine, nir.Linear)
_NEURON_NODES = (nir.LIF, nir.CubaLIF)


# --------------------------------------------------------------------------- reading graphs
def read_nir(
    path: str | os.PathLike[str],
    num_steps: int | None = None,
    *,
    dt: float | None = None,
    writable: Iterable[str] | str | None = None,
) -> NetworkSpec:
    """The NetworkSpec of a NIR file (see :func:`from_nir`)."""
    return from_nir(path, num_steps, dt=dt, writable=writable)


def _as_graph(graph_or_path: Any) -> Any:
    """The graph itself, or read from its file; the installed nir checked first."""
    require_nir_version()
    if isinstance(graph_or_path, (str, os.PathLike)):
        return _read_graph(graph_or_path)
    return graph_or_path


def _graph_dt(meta: Mapping[str, Any], dt: float | None) -> tuple[float, str]:
    """The dt a graph is read at and where it came from: ``dt`` given, else the graph's
    metadata, else ``DEFAULT_DT``."""
    if dt is not None:
        return _dt(dt), "--dt / dt="
    if "dt" in meta:
        return _dt(meta["dt"]), "the graph's metadata"
    return DEFAULT_DT, "the default: the graph names none; --dt / dt= sets it"


def _read_graph(path: str | os.PathLike[str]) -> Any:
    if not os.path.exists(path):
        raise SpecError(f"NIR file not found: {path}")
    from polystep_neuro.core.network import is_netx_file

    if is_netx_file(path):
        raise SpecError(
            f"{path} is a lava-dl netx network, not a NIR graph: polystep-neuro writes netx "
            "files (export --to netx) but does not read them; bring the network in as a NIR "
            "graph, an snnTorch model or a spec (.npz)"
        )
    try:
        return nir.read(path)
    except Exception as exc:  # h5py, nir's asserts and type checks: all mean "unreadable"
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SpecError(f"{path} is not a readable NIR graph: {detail}") from None


def graph_steps(graph_or_path: Any) -> int | None:
    """The number of time steps a graph names in its metadata (as :func:`to_nir` writes
    it), None when it names none (a graph from another tool) or cannot be read here (the
    read that follows says why)."""
    try:
        graph = _as_graph(graph_or_path)
    except SpecError:
        return None
    meta = getattr(graph, "metadata", None)
    if not isinstance(meta, Mapping) or _META_STEPS not in meta:
        return None
    return int(meta[_META_STEPS])


def from_nir(
    graph_or_path: Any,
    num_steps: int | None = None,
    *,
    dt: float | None = None,
    writable: Iterable[str] | str | None = None,
) -> NetworkSpec:
    """The NetworkSpec of a NIR graph (a ``nir.NIRGraph`` or the path of a NIR file).

    ``num_steps`` and ``writable`` default to the graph's metadata (as :func:`to_nir` writes
    it); a graph from another tool needs ``num_steps``.  ``dt``: see the module docstring.
    Anything the spec cannot represent raises ``SpecError`` naming the node.
    """
    graph = _as_graph(graph_or_path)
    if not isinstance(graph, nir.NIRGraph):
        raise SpecError(f"expected a nir.NIRGraph or a NIR file, got {type(graph).__name__}")
    meta = dict(graph.metadata) if isinstance(graph.metadata, Mapping) else {}
    step, _ = _graph_dt(meta, dt)
    if dt is None and "dt" not in meta:
        _refuse_tau_in_steps(graph)
    if num_steps is None:
        if _META_STEPS not in meta:
            raise SpecError(
                "num_steps is needed: a NIR graph has no number of time steps (--time-steps T "
                "on the command line, time_steps=T in the Python API; given data, the "
                "commands and the API take T from them)"
            )
        num_steps = int(meta[_META_STEPS])
    if writable is None:
        names = str(meta.get(_META_WRITABLE, ""))
        writable = tuple(n for n in names.split(",") if n)
    segments, flattened = _segments(graph)
    layers = [_layer(segment, step) for segment in segments]
    shape = _input_shape(graph)
    if shape.size != 1 and not flattened:
        raise SpecError(
            f"the Input node has shape {shape.tolist()}; a NetworkSpec takes 1-D inputs (a "
            f"Flatten node after the Input flattens them)"
        )
    n_in = int(np.prod(shape))
    if layers[0].n_in != n_in:
        raise SpecError(
            f"the first weight node has {layers[0].n_in} inputs but the Input node gives {n_in}"
        )
    spec = NetworkSpec(layers, int(num_steps)).validate().with_writable(writable)
    copies = int(meta.get(_META_COPIES, 1))
    return spec if copies == 1 else spec.with_readout_copies(copies)


def _dt(value: Any) -> float:
    step = float(value)
    if not (np.isfinite(step) and step > 0):
        raise SpecError(f"dt must be a positive number of seconds, got {value!r}")
    return step


def _kind(node: Any) -> str:
    return type(node).__name__


def _chain(graph: Any) -> list[tuple[str, Any]]:
    """The graph's nodes in order from its one Input to its one Output, or SpecError."""
    nodes: Mapping[str, Any] = graph.nodes
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise SpecError(
                f"node {name!r} is a nested NIRGraph (how recurrent layers such as snnTorch's "
                f"RLeaky/RSynaptic are written); a NetworkSpec is a feed-forward chain"
            )
    succ: dict[str, list[str]] = {name: [] for name in nodes}
    pred: dict[str, list[str]] = {name: [] for name in nodes}
    for src, dst in graph.edges:
        if src not in nodes or dst not in nodes:
            raise SpecError(f"edge ({src!r}, {dst!r}) names a node the graph does not have")
        succ[src].append(dst)
        pred[dst].append(src)
    loop = _find_cycle(succ)
    if loop:
        raise SpecError(
            f"recurrent connection {' -> '.join(loop)}: a NetworkSpec is feed-forward "
            f"(recurrent layers are not supported)"
        )
    for name in nodes:
        if len(succ[name]) > 1:
            raise SpecError(
                f"node {name!r} feeds {len(succ[name])} nodes {succ[name]}; only a single chain "
                f"from Input to Output is supported (no branches)"
            )
        if len(pred[name]) > 1:
            raise SpecError(
                f"node {name!r} receives {len(pred[name])} nodes {pred[name]}; only a single "
                f"chain from Input to Output is supported (no merges)"
            )
    inputs = [name for name, node in nodes.items() if isinstance(node, nir.Input)]
    outputs = [name for name, node in nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise SpecError(
            f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; a NetworkSpec "
            f"has exactly one of each"
        )
    order = [inputs[0]]
    while succ[order[-1]]:
        order.append(succ[order[-1]][0])
    if order[-1] != outputs[0]:
        raise SpecError(
            f"the chain from Input {inputs[0]!r} ends at {order[-1]!r}, not at the Output node"
        )
    stray = sorted(set(nodes) - set(order))
    if stray:
        raise SpecError(
            f"nodes {stray} are not on the chain from Input to Output; only a single chain is "
            f"supported"
        )
    return [(name, nodes[name]) for name in order]


def _find_cycle(succ: Mapping[str, list[str]]) -> list[str]:
    """One directed cycle as [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in succ:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(succ[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(succ[nxt]))
    return []


def _input_shape(graph: Any) -> np.ndarray:
    node = next(n for n in graph.nodes.values() if isinstance(n, nir.Input))
    return np.asarray(node.input_type["input"]).reshape(-1)


def _segments(graph: Any) -> tuple[list[dict[str, Any]], bool]:
    """Split the chain into layers ([Delay] weight [Delay] neuron, each a dict); and whether
    a Flatten of the input came first."""
    segments: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    flattened = False
    for name, node in _chain(graph)[1:-1]:
        if isinstance(node, nir.Flatten):
            if segments or current:
                raise SpecError(
                    f"node {name!r} (Flatten) is not directly after the Input; only a Flatten of "
                    f"the network input is supported"
                )
            flattened = True  # the spec takes the input flattened (C order)
            continue
        if isinstance(node, nir.Delay):
            if "delay" in current:
                raise SpecError(
                    f"node {name!r}: two Delay nodes in one layer ({current['delay'][0]!r} and "
                    f"{name!r}); a layer has one synaptic delay"
                )
            if "weight" in current and _has_bias(current["weight"][1]):
                raise SpecError(
                    f"node {name!r}: a Delay between Affine {current['weight'][0]!r} (which has a "
                    f"bias) and its neuron also delays the bias; put the Delay before the Affine"
                )
            current["delay"] = (name, node)
        elif isinstance(node, _WEIGHT_NODES):
            if "weight" in current:
                raise SpecError(
                    f"node {name!r}: two weight nodes in a row ({current['weight'][0]!r} and "
                    f"{name!r}) with no spiking neuron between them"
                )
            current["weight"] = (name, node)
        elif isinstance(node, _NEURON_NODES):
            if "weight" not in current:
                raise SpecError(
                    f"node {name!r} ({_kind(node)}) has no Affine/Linear node before it; every "
                    f"layer is a weight node followed by LIF or CubaLIF"
                )
            current["neuron"] = (name, node)
            segments.append(current)
            current = {}
        else:
            raise SpecError(
                f"node {name!r} is a {_kind(node)}, which a NetworkSpec cannot represent; "
                f"supported: {SUPPORTED_NODES}"
            )
    if current:
        last = current.get("weight", current.get("delay"))
        assert last is not None
        raise SpecError(
            f"node {last[0]!r} is not followed by a LIF/CubaLIF neuron; the network's output must "
            f"be the spikes of a neuron layer"
        )
    if not segments:
        raise SpecError("the graph has no Affine/Linear + LIF/CubaLIF layer")
    return segments, flattened


def _has_bias(node: Any) -> bool:
    return isinstance(node, nir.Affine) and bool(np.any(np.asarray(node.bias) != 0))


def _per_neuron(name: str, node: Any, attr: str, n: int) -> np.ndarray:
    arr = np.asarray(getattr(node, attr), dtype=np.float64)
    if arr.shape not in ((), (1,), (n,)):
        raise SpecError(
            f"node {name!r} ({_kind(node)}): {attr} has shape {arr.shape}, expected ({n},) for "
            f"its {n} neurons"
        )
    if not np.all(np.isfinite(arr) | (np.isinf(arr) & (arr > 0))):
        raise SpecError(f"node {name!r} ({_kind(node)}): {attr} contains NaN or -inf")
    return np.broadcast_to(arr.reshape(-1), (n,)).copy()


def _uniform(name: str, node: Any, attr: str, n: int) -> float:
    arr = _per_neuron(name, node, attr, n)
    if not np.all(arr == arr[0]):
        raise SpecError(
            f"node {name!r} ({_kind(node)}): per-neuron {attr} (values from {arr.min():g} to "
            f"{arr.max():g}); a NetworkSpec has one {attr} per layer"
        )
    return float(arr[0])


def _refuse_tau_in_steps(graph: Any) -> None:
    """A graph that names no dt is read at ``DEFAULT_DT``; a time constant of a second or
    more is then 10,000 steps or more, so the graph almost surely gives it in time steps (as
    Sinabs's exporter does), and read in seconds its network would barely leak or fire."""
    for name, node in graph.nodes.items():
        for attr in ("tau", "tau_mem", "tau_syn"):
            if getattr(node, attr, None) is None:
                continue
            tau = float(np.max(np.asarray(getattr(node, attr), dtype=np.float64)))
            if tau >= 1.0:
                raise SpecError(
                    f"node {name!r} ({_kind(node)}): {attr}={tau:g} and the graph names no "
                    f"dt; read at the default dt={DEFAULT_DT:g} s that is {tau / DEFAULT_DT:,.0f} "
                    "steps per time constant, so the graph most likely gives its time "
                    "constants in time steps (Sinabs's exporter does): pass --dt 1 (dt=1 from "
                    "Python), or the graph's dt in seconds"
                )


def _decay(name: str, node: Any, attr: str, n: int, dt: float) -> float:
    """dt / tau in (0, 1] (float64; rounded to float32 by the caller)."""
    tau = _uniform(name, node, attr, n)
    if not tau > 0:
        raise SpecError(f"node {name!r} ({_kind(node)}): {attr}={tau:g} must be > 0")
    decay = dt / tau
    if decay > 1:
        raise SpecError(
            f"node {name!r} ({_kind(node)}): {attr}={tau:g} is shorter than dt={dt:g}, a decay "
            f"of {decay:g} per step (more than all of the state); pass the graph's dt"
        )
    return decay


def _delay_steps(segment: Mapping[str, Any], n_in: int, n_out: int, dt: float) -> int:
    if "delay" not in segment:
        return 0
    name, node = segment["delay"]
    arr = np.asarray(node.delay, dtype=np.float64).reshape(-1)
    if arr.size not in (1, n_in, n_out) or not np.all(arr == arr[0]):
        raise SpecError(
            f"node {name!r} (Delay): per-neuron or mis-shaped delays {np.asarray(node.delay)}; "
            f"a layer has one delay"
        )
    steps = float(arr[0]) / dt
    if abs(steps - round(steps)) > GAIN_RTOL or round(steps) not in (0, 1):
        raise SpecError(
            f"node {name!r} (Delay): delay {arr[0]:g} is {steps:g} steps of dt={dt:g}; a layer "
            f"delays its input by 0 or 1 step"
        )
    return int(round(steps))


def _dynamics(n_name: str, neuron: Any, n_out: int, dt: float) -> tuple[float, float, np.ndarray]:
    """(du, dv, input gain per neuron) of a LIF / CubaLIF node read at ``dt``."""
    dv = _decay(n_name, neuron, "tau_mem" if isinstance(neuron, nir.CubaLIF) else "tau", n_out, dt)
    r = _per_neuron(n_name, neuron, "r", n_out)
    gain = r * dv  # dt * r / tau_mem
    du = 1.0
    if isinstance(neuron, nir.CubaLIF):
        du = _decay(n_name, neuron, "tau_syn", n_out, dt)
        gain = gain * _per_neuron(n_name, neuron, "w_in", n_out) * du
    if not np.all(np.isfinite(gain) & (gain > 0)):
        raise SpecError(
            f"node {n_name!r} ({_kind(neuron)}): input gain {gain.min():g}..{gain.max():g} "
            f"(from r, w_in and the time constants) must be finite and > 0"
        )
    return du, dv, gain


def reading_notes(graph_or_path: Any, dt: float | None = None) -> list[str]:
    """How a graph is read, for people: the dt and where it came from, and per layer the
    decays and any input gain folded into the weights (a graph from another tool is read
    by NIR's definition, which its own arithmetic may not follow: docs/interop.md)."""
    graph = _as_graph(graph_or_path)
    meta = dict(graph.metadata) if isinstance(graph.metadata, Mapping) else {}
    step, source = _graph_dt(meta, dt)
    notes = [f"dt = {step:g} s ({source})"]
    for i, segment in enumerate(_segments(graph)[0]):
        n_name, neuron = segment["neuron"]
        n_out = np.asarray(segment["weight"][1].weight).shape[0]
        du, dv, gain = _dynamics(n_name, neuron, n_out, step)
        line = f"layer {i} ({n_name}, {_kind(neuron)}): dv = {dv:.4g}"
        line += f", du = {du:.4g}" if isinstance(neuron, nir.CubaLIF) else ""
        if not np.all(np.abs(gain - 1.0) <= GAIN_RTOL):
            lo, hi = float(gain.min()), float(gain.max())
            span = f"{lo:.4g}" if np.isclose(lo, hi) else f"{lo:.4g}..{hi:.4g}"
            line += f", input gain {span} folded into its weights and bias"
        notes.append(line)
    return notes


def _layer(segment: Mapping[str, Any], dt: float) -> LayerSpec:
    """One NIR layer pair to a LayerSpec (long: each refusal names its node and reason
    in place)."""
    w_name, w_node = segment["weight"]
    n_name, neuron = segment["neuron"]
    weight = np.asarray(w_node.weight)
    if weight.ndim != 2:
        raise SpecError(
            f"node {w_name!r} ({_kind(w_node)}): weight has shape {weight.shape}; only 2-D "
            f"(n_out, n_in) matrices are supported"
        )
    n_out, n_in = weight.shape
    bias = None
    if isinstance(w_node, nir.Affine):
        bias = np.asarray(w_node.bias, dtype=np.float64)
        if bias.shape not in ((n_out,), ()):
            raise SpecError(
                f"node {w_name!r} (Affine): bias has shape {bias.shape}, expected ({n_out},)"
            )
        bias = np.broadcast_to(bias, (n_out,))
    du, dv, gain = _dynamics(n_name, neuron, n_out, dt)
    kind = "synaptic" if isinstance(neuron, nir.CubaLIF) else "leaky"
    v_reset = _per_neuron(n_name, neuron, "v_reset", n_out)
    if np.any(v_reset != 0):
        raise SpecError(
            f"node {n_name!r} ({_kind(neuron)}): v_reset={v_reset[v_reset != 0][0]:g}; a "
            f"NetworkSpec resets the voltage to 0"
        )
    vth = _uniform(n_name, neuron, "v_threshold", n_out)
    v_bias = dv * _per_neuron(n_name, neuron, "v_leak", n_out)
    if not np.all(np.isfinite(v_bias)):
        raise SpecError(f"node {n_name!r} ({_kind(neuron)}): v_leak must be finite")
    if not np.all(np.abs(gain - 1.0) <= GAIN_RTOL):
        weight = weight.astype(np.float64) * gain[:, None]
        bias = None if bias is None else bias * gain
    meta = neuron.metadata if isinstance(neuron.metadata, Mapping) else {}
    if _META_V_BIAS in meta:  # written by to_nir: the Affine bias holds fc bias + v_bias
        v_bias = np.asarray(meta[_META_V_BIAS], dtype=np.float32).reshape(n_out)
        kept = meta.get(_META_FC_BIAS)
        bias = None if kept is None else np.asarray(kept, dtype=np.float32).reshape(n_out)
    scale = meta.get(_META_SCALE)
    exp = meta.get(_META_EXP)
    return LayerSpec(
        weight=np.asarray(weight, dtype=np.float32),
        bias=None if bias is None else np.asarray(bias, dtype=np.float32),
        du=float(np.float32(du)),
        dv=float(np.float32(dv)),
        vth=float(np.float32(vth)),
        v_bias=np.asarray(v_bias, dtype=np.float32),
        reset="zero",
        reset_delay=False,
        delay=_delay_steps(segment, n_in, n_out, dt),
        neuron=kind,
        fixed_scale=None if scale is None or exp is None else float(scale),
        fixed_weight_exp=None if scale is None or exp is None else int(exp),
    )


# --------------------------------------------------------------------------- writing graphs
def _check_exportable(spec: NetworkSpec) -> None:
    for i, layer in enumerate(spec.layers):
        if layer.reset != "zero" or layer.reset_delay:
            raise SpecError(
                f"layer {i}: reset={layer.reset!r}, reset_delay={layer.reset_delay}; NIR neurons "
                f"reset to v_reset in the spiking step (reset='zero', reset_delay=False), so "
                f"this layer has no NIR equivalent (convert --device-semantics converts it; "
                f"Python: interop.to_device_semantics)"
            )
        for name in ("du", "dv"):
            if float(np.float32(getattr(layer, name))) == 0.0:
                raise SpecError(
                    f"layer {i}: {name}=0 is an infinite NIR time constant, which needs an "
                    f"infinite {'w_in' if name == 'du' else 'r'} to pass any input"
                )


def to_nir(spec: NetworkSpec, *, dt: float = DEFAULT_DT, output_copies: int = 1) -> Any:
    """The NIR graph (``nir.NIRGraph``) of ``spec``; see the module docstring for the mapping.

    Nodes are named ``input``, ``delay{i}``, ``fc{i}``, ``lif{i}``, ``output``.  ``dt``, the
    spec's ``num_steps`` and ``writable`` go into the graph's metadata, a layer's fixed-point
    calibration into its neuron node's metadata.  ``output_copies``: ``spec`` is a device
    network whose outputs are that many copies a class (``NetworkSpec.device_network``), said
    in the metadata so that :func:`from_nir` reads the classes back.
    """
    refuse_output_copies(spec, "a NIR graph")
    if output_copies < 1 or spec.n_out % output_copies:
        raise SpecError(f"{spec.n_out} outputs are not {output_copies} copies of each class")
    spec.validate()
    require_nir_version()
    step = _dt(dt)
    _check_exportable(spec)
    nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array([spec.n_in]))}
    order = ["input"]
    for i, layer in enumerate(spec.layers):
        n = layer.n_out
        if layer.delay == 1:
            nodes[f"delay{i}"] = nir.Delay(delay=np.full(layer.n_in, step))
            order.append(f"delay{i}")
        weight = np.array(layer.weight, dtype=np.float32)
        du = float(np.float32(layer.du))
        dv = float(np.float32(layer.dv))
        assert layer.v_bias is not None
        meta: dict[str, Any] = {}
        if layer.fixed_scale is not None and layer.fixed_weight_exp is not None:
            meta = {_META_SCALE: float(layer.fixed_scale), _META_EXP: int(layer.fixed_weight_exp)}
        bias, v_leak = layer.bias, layer.v_bias.astype(np.float64) / dv
        if du == 1.0 and np.any(layer.v_bias != 0):
            # No current memory: a voltage bias is an input bias (gain dt*r/tau = 1), which
            # snnTorch and Sinabs load where they refuse v_leak.
            meta[_META_V_BIAS] = np.array(layer.v_bias, dtype=np.float32)
            if layer.bias is not None:
                meta[_META_FC_BIAS] = np.array(layer.bias, dtype=np.float32)
            bias = layer.v_bias if layer.bias is None else layer.bias + layer.v_bias
            v_leak = np.zeros(n)
        if bias is None:
            nodes[f"fc{i}"] = nir.Linear(weight=weight)
        else:
            nodes[f"fc{i}"] = nir.Affine(weight=weight, bias=np.array(bias, np.float32))
        tau_mem = np.full(n, step / dv)
        common: dict[str, Any] = {
            "r": tau_mem / step,
            "v_leak": v_leak,
            "v_threshold": np.full(n, float(np.float32(layer.vth))),
            "v_reset": np.zeros(n),
        }
        if layer.neuron == "leaky":
            nodes[f"lif{i}"] = nir.LIF(tau=tau_mem, metadata=meta, **common)
        else:
            tau_syn = np.full(n, step / du)
            nodes[f"lif{i}"] = nir.CubaLIF(
                tau_syn=tau_syn, tau_mem=tau_mem, w_in=tau_syn / step, metadata=meta, **common
            )
        order += [f"fc{i}", f"lif{i}"]
    nodes["output"] = nir.Output(output_type=np.array([spec.n_out]))
    order.append("output")
    metadata = {
        "dt": step,
        _META_STEPS: int(spec.num_steps),
        _META_WRITABLE: ",".join(spec.writable),
        **({_META_COPIES: int(output_copies)} if output_copies != 1 else {}),
    }
    return nir.NIRGraph(
        nodes=nodes, edges=list(zip(order[:-1], order[1:], strict=True)), metadata=metadata
    )


def write_nir(
    spec: NetworkSpec,
    path: str | os.PathLike[str],
    *,
    dt: float = DEFAULT_DT,
    output_copies: int = 1,
) -> None:
    """Write ``to_nir(spec, dt=dt, output_copies=...)`` to a NIR (HDF5) file."""
    graph = to_nir(spec, dt=dt, output_copies=output_copies)
    try:
        nir.write(path, graph)
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc}") from None
