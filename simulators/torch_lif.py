"""Batched LIF simulator: V parameter sets x B samples x T steps in one pass (CPU or CUDA).

Two precisions:
- ``float32``: the float CUBA LIF of polystep_neuro.network with snnTorch's reset semantics
  (delay 0 reproduces ``nn.Linear`` + ``snn.Leaky``/``snn.Synaptic``; delay 1 is Lava's
  ``floating_pt`` model).
- ``loihi-fixed``: Loihi 2 integer arithmetic exactly as Lava's bit-accurate models compute
  it (../shared/docs/LOIHI_FIXED_POINT.md), so a GPU can stand in for the chip.

Speed: every Dense projection is one GEMM over all timesteps (the network is feed-forward, so
a layer's whole spike train is known before the next layer runs); only the neuron update
loops over time, with (V, B, N) tensors.  Layers before the first varied parameter are
computed once and shared by all V sets.  State is kept time-major, (T, V, B, N).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polystep_neuro.errors import SpecError
from polystep_neuro.network import LayerSpec, NetworkSpec, split_param_name
from simulators import fixed_point as fp

PRECISIONS = ("float32", "loihi-fixed")
_INT32_SPAN = 1 << 32
# Integer-valued float32 GEMMs are exact while every partial sum stays below 2**24.
_F32_EXACT = 1 << 24


@dataclass
class SimResult:
    """Output counts, and per-layer traces when recorded.

    counts: (V, B, N_out) int32 spike counts over the T steps.
    spikes / voltages / currents: one (V, B, T, N) tensor per layer (``record=True``);
    voltages are after the reset of the step (what Lava's ``v`` Var holds), and in
    ``loihi-fixed`` mode they are the device integers (int64).
    """

    counts: torch.Tensor
    spikes: list[torch.Tensor] | None = None
    voltages: list[torch.Tensor] | None = None
    currents: list[torch.Tensor] | None = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU; asking for absent CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was asked for but CUDA is not available here; use 'cpu'")
    return dev


@contextlib.contextmanager
def _exact_fp32_matmul() -> Iterator[None]:
    """TF32 would round integer GEMMs on CUDA; switch it off for the fixed-point path."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement int32 wrap of integer values (what numpy int32 arithmetic does)."""
    return torch.remainder(x + 2.0**31, float(_INT32_SPAN)) - 2.0**31


def _project(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (T, Vx, B, n_in) @ w (Vw, n_out, n_in)^T -> (T, max(Vx, Vw), B, n_out), one GEMM."""
    t, vx, b, n_in = x.shape
    vw, n_out, _ = w.shape
    if vw == 1:
        return (x.reshape(-1, n_in) @ w[0].T).reshape(t, vx, b, n_out)
    if vx == 1:
        stacked = w.permute(2, 0, 1).reshape(n_in, vw * n_out)
        out = (x.reshape(t * b, n_in) @ stacked).reshape(t, b, vw, n_out)
        return out.permute(0, 2, 1, 3).contiguous()
    if vx != vw:
        raise SpecError(f"internal: {vx} input sets vs {vw} weight sets")
    xv = x.permute(1, 0, 2, 3).reshape(vx, t * b, n_in)
    out = torch.bmm(xv, w.transpose(1, 2)).reshape(vw, t, b, n_out)
    return out.permute(1, 0, 2, 3).contiguous()


def _delayed(a: torch.Tensor, delay: int) -> torch.Tensor:
    """Shift along time (dim 0) by ``delay`` steps, zeros first (Lava's Dense buffer)."""
    if delay == 0:
        return a
    out = torch.zeros_like(a)
    out[delay:] = a[:-delay]
    return out


class TorchLIF:
    """Evaluates a NetworkSpec for many parameter sets at once.

    ``run(params, inputs)`` takes ``params`` as ``{name: (V, *shape)}`` (only writable
    names; others keep the spec's values) and ``inputs`` as ``(B, T, N_in)``.
    """

    def __init__(
        self,
        spec: NetworkSpec,
        precision: str = "float32",
        device: str | torch.device | None = "cpu",
    ) -> None:
        if precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        spec.validate()
        if precision == "loihi-fixed":
            fp.check_fixed_compatible(spec)
            spec = fp.calibrate(spec)
        self.spec = spec
        self.precision = precision
        self.device = resolve_device(device)
        self._base = {
            name: torch.as_tensor(np.asarray(value), device=self.device).unsqueeze(0)
            for name, value in spec.parameters().items()
        }

    # ------------------------------------------------------------------ public
    def run(
        self,
        params: Mapping[str, Any] | None,
        inputs: Any,
        *,
        record: bool = False,
    ) -> SimResult:
        params = dict(params or {})
        num_sets = self.spec.check_param_sets(params)
        self.spec.check_inputs(inputs)
        resolved = self._resolve(params)
        varied = {split_param_name(name) for name in params}
        x = self._prepare_inputs(inputs)
        # group[v]: which distinct network prefix (layers so far) parameter set v uses.
        # Sets that agree on every varied parameter of a prefix share its computation —
        # PolyStep's candidates differ in one block each, so most prefixes are shared.
        group = torch.zeros(num_sets, dtype=torch.long, device=self.device)
        recorded: list[tuple[torch.Tensor, ...]] = []
        last = len(self.spec.layers) - 1
        for i, layer in enumerate(self.spec.layers):
            lp = {attr: v for (index, attr), v in resolved.items() if index == i}
            layer_varied = sorted(attr for index, attr in varied if index == i)
            if layer_varied:
                rep, inverse = _distinct_sets(group, [lp[attr] for attr in layer_varied])
                for attr in layer_varied:
                    lp[attr] = lp[attr][rep]
                if x.shape[1] > 1:
                    x = x[:, group[rep]]
                group = inverse
            if self.precision == "float32":
                spikes, volts, currs = self._layer_float(layer, lp, x, record)
            else:
                spikes, volts, currs = self._layer_fixed(layer, lp, x, record)
            if record:
                recorded.append((group, spikes, volts, currs))  # type: ignore[arg-type]
            if i < last:
                x = spikes.to(torch.float32)
        counts = _per_set(spikes.sum(dim=0, dtype=torch.int32), group)
        if not record:
            return SimResult(counts=counts)
        return SimResult(
            counts=counts,
            spikes=[_per_set(_batch_major(r[1]), r[0]) for r in recorded],
            voltages=[_per_set(_batch_major(r[2]), r[0]) for r in recorded],
            currents=[_per_set(_batch_major(r[3]), r[0]) for r in recorded],
        )

    def counts(self, params: Mapping[str, Any] | None, inputs: Any) -> torch.Tensor:
        return self.run(params, inputs).counts

    # ------------------------------------------------------------------ helpers
    def _resolve(self, params: Mapping[str, Any]) -> dict[tuple[int, str], torch.Tensor]:
        """Every parameter keyed by (layer, attribute), passed sets over loaded values."""
        out = {split_param_name(name): value for name, value in self._base.items()}
        for name, value in params.items():
            t = torch.as_tensor(value, device=self.device)
            if not t.is_floating_point():
                t = t.to(torch.float32)
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise SpecError(f"parameter {name!r} contains {bad} non-finite value(s)")
            out[split_param_name(name)] = t.to(torch.float32)
        return out

    def _prepare_inputs(self, inputs: Any) -> torch.Tensor:
        x = torch.as_tensor(inputs, device=self.device)
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise SpecError("inputs contain non-finite values")
        if self.precision == "loihi-fixed" and not bool(((x == 0) | (x == 1)).all()):
            raise SpecError("loihi-fixed inputs must be binary spikes (0 or 1)")
        return x.permute(1, 0, 2).unsqueeze(1).contiguous()  # (T, 1, B, N_in)

    def _layer_float(
        self, layer: LayerSpec, p: dict[str, torch.Tensor], x: torch.Tensor, record: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        a = _delayed(_project(x, p["weight"]), layer.delay)
        if "bias" in p:
            a = a + p["bias"][None, :, None, :]
        alpha = (1.0 - p["du"]).view(-1, 1, 1)
        beta = (1.0 - p["dv"]).view(-1, 1, 1)
        vth = p["vth"].view(-1, 1, 1)
        vb = p["v_bias"][:, None, :]
        has_vb = bool((vb != 0).any())
        has_memory = bool((alpha != 0).any())
        steps = a.shape[0]
        sets = max(a.shape[1], alpha.shape[0], beta.shape[0], vth.shape[0], vb.shape[0])
        shape = (sets, a.shape[2], a.shape[3])
        u = torch.zeros(shape, device=a.device)
        v = torch.zeros(shape, device=a.device)
        spikes = torch.empty((steps, *shape), dtype=torch.bool, device=a.device)
        volts = torch.empty((steps, *shape), device=a.device) if record else None
        currs = torch.empty_like(volts) if record else None
        # Zero reset in the spiking step (Lava, snnTorch reset_delay=False) and no reset
        # never look at the previous step's reset, so they run in place.
        simple = layer.reset == "none" or (layer.reset == "zero" and not layer.reset_delay)
        for t in range(steps):
            if has_memory:
                cur = u.mul_(alpha).add_(a[t])
            else:
                cur = a[t].expand(shape)
            if simple:
                v.mul_(beta).add_(cur)
                if has_vb:
                    v.add_(vb)
                torch.gt(v, vth, out=spikes[t])
                if layer.reset == "zero":
                    v.masked_fill_(spikes[t], 0.0)
            else:
                v = _snntorch_reset_step(layer, v, cur, beta, vth, vb, spikes[t])
            if record:
                volts[t] = v  # type: ignore[index]
                currs[t] = cur  # type: ignore[index]
        return spikes, volts, currs

    def _layer_fixed(
        self, layer: LayerSpec, p: dict[str, torch.Tensor], x: torch.Tensor, record: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loihi integer arithmetic, held in float64 (exact for these magnitudes and faster
        than int64 on CPU and GPU).  The int32 and 24-bit wraps Lava's numpy code performs
        are applied only where the per-layer bounds say they can occur."""
        w = fp.quantize_weight(p["weight"], layer)
        exact_f32 = layer.n_in * max(abs(fp.WEIGHT_MIN), fp.WEIGHT_MAX) < _F32_EXACT
        with _exact_fp32_matmul():
            if exact_f32:
                acc = _project(x, w.to(torch.float32)).double()
            else:
                acc = _project(x.double(), w)
        exp = int(layer.fixed_weight_exp or 0)
        acc = acc * float(2**exp) if exp >= 0 else torch.floor(acc / float(2**-exp))
        amax = float(acc.abs().max()) if acc.numel() else 0.0
        if amax >= 2**31:
            acc = _wrap_int32(acc)
        act = _delayed(acc, layer.delay).mul_(float(1 << fp.ACT_SHIFT))
        if amax * (1 << fp.ACT_SHIFT) >= 2**31:
            act = _wrap_int32(act)
        bias = p["v_bias"] if "bias" not in p else p["v_bias"] + p["bias"]
        mant, bexp = fp.quantize_bias(bias, layer)
        bias_eff = (mant * 2.0**bexp)[:, None, :]
        du = fp.quantize_du(p["du"]).view(-1, 1, 1)
        dv = fp.quantize_dv(p["dv"]).view(-1, 1, 1)
        vth = (fp.quantize_vth(p["vth"], layer) * float(1 << fp.VTH_SHIFT)).view(-1, 1, 1)
        u_factor = (fp.DECAY_UNITY - (du + fp.DU_OFFSET)) / fp.DECAY_UNITY
        v_factor = (fp.DECAY_UNITY - dv) / fp.DECAY_UNITY
        steps = act.shape[0]
        vmax = float(fp.UV_MAX)
        # Worst-case magnitudes decide which wraps and clips can ever trigger.
        has_memory = bool((u_factor != 0).any())
        u_bound = amax * (1 << fp.ACT_SHIFT)
        if has_memory:
            u_bound *= min(steps, fp.DECAY_UNITY / (float(du.min()) + fp.DU_OFFSET))
        may_wrap = u_bound >= vmax
        v_bound = (min(u_bound, 2.0**31) + float(bias_eff.abs().max())) * min(
            steps, fp.DECAY_UNITY / max(float(dv.min()), 1.0)
        )
        may_clip = v_bound >= vmax - 1
        has_bias = bool((bias_eff != 0).any())
        sets = max(act.shape[1], du.shape[0], dv.shape[0], vth.shape[0], bias_eff.shape[0])
        shape = (sets, act.shape[2], act.shape[3])
        u = torch.zeros(shape, dtype=torch.float64, device=act.device)
        v = torch.zeros(shape, dtype=torch.float64, device=act.device)
        spikes = torch.empty((steps, *shape), dtype=torch.bool, device=act.device)
        volts = (
            torch.empty((steps, *shape), dtype=torch.int64, device=act.device) if record else None
        )
        currs = torch.empty_like(volts) if record else None
        for t in range(steps):
            if has_memory:
                u.mul_(u_factor).trunc_().add_(act[t])
            else:
                u = act[t].expand(shape)
            if may_wrap:
                u = _wrap_int32(u)
                wrapped = torch.where(u > vmax, u - 2 * vmax, u)
                u = torch.where(wrapped <= -vmax, u + 2 * vmax, wrapped)
            v.mul_(v_factor).trunc_().add_(u)
            if has_bias:
                v.add_(bias_eff)
            if may_wrap:
                v = _wrap_int32(v)
            if may_clip:
                v.clamp_(-vmax + 1, vmax - 1)
            torch.gt(v, vth, out=spikes[t])
            v.masked_fill_(spikes[t], 0.0)
            if record:
                volts[t] = v  # type: ignore[index]
                currs[t] = u  # type: ignore[index]
        return spikes, volts, currs


def _snntorch_reset_step(
    layer: LayerSpec,
    v: torch.Tensor,
    cur: torch.Tensor,
    beta: torch.Tensor,
    vth: torch.Tensor,
    vb: torch.Tensor,
    spike_out: torch.Tensor,
) -> torch.Tensor:
    """One membrane step with snnTorch's reset rules (see LOIHI_FIXED_POINT.md):
    the reset signal comes from the previous membrane; without ``reset_delay`` this
    step's spike is reset at once, minus what the delayed reset already removed."""
    r = (v > vth).to(v.dtype)
    if layer.reset == "subtract":
        base = beta * v + cur + vb - r * vth
    elif layer.reset == "none":
        base = beta * v + cur + vb
    elif layer.neuron == "leaky":
        base = beta * (1.0 - r) * v + cur + vb
    else:  # snn.Synaptic zeroes the whole new membrane after a spike
        base = (1.0 - r) * (beta * v + cur + vb)
    torch.gt(base, vth, out=spike_out)
    if layer.reset_delay or layer.reset == "none":
        return base
    undo = spike_out.to(v.dtype) - r
    if layer.reset == "subtract":
        return base - undo * vth
    return base - undo * base


def _batch_major(x: torch.Tensor | None) -> torch.Tensor:
    assert x is not None
    return x.permute(1, 2, 0, 3)  # (T, V, B, N) -> (V, B, T, N)


def _per_set(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per-group results (G, ...) -> per parameter set (V, ...)."""
    if x.shape[0] == 1:
        return x.expand(group.shape[0], *x.shape[1:])
    return x[group]


def _distinct_sets(
    group: torch.Tensor, values: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct (prefix group, varied values) combinations, compared bit for bit.

    Returns a representative set index per distinct combination and, per set, the index
    of its combination.
    """
    num_sets = group.shape[0]
    columns = [group.view(-1, 1)]
    for value in values:
        bits = value.reshape(value.shape[0], -1).contiguous().view(torch.int32)
        columns.append(bits.expand(num_sets, -1).to(torch.int64))
    keys = torch.cat(columns, dim=1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    distinct = int(inverse.max()) + 1
    rep = torch.full((distinct,), num_sets, dtype=torch.long, device=group.device)
    rep.scatter_reduce_(0, inverse, torch.arange(num_sets, device=group.device), "amin")
    return rep, inverse
