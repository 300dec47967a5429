"""The neuron update of one layer over T steps, for a block of parameter sets.

The synaptic input ``a`` of every step is already computed (one GEMM per layer); what is
left is sequential in time but independent per neuron, so the caller hands these loops
blocks small enough to keep the state in cache.  Tensors are time-major logical views
``(T, S, B, N)`` of any memory layout; ``a`` may have one set that all S sets share.

``float32`` follows snnTorch's operation order exactly; ``loihi-fixed`` is Lava's
bit-accurate integer arithmetic held in float64 (exact at these magnitudes and faster than
int64 on CPU and GPU), with the int32 and 24-bit wraps applied only where bounds say they
can occur.  See ../shared/docs/LOIHI_FIXED_POINT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from polystep_neuro.network import LayerSpec
from simulators import fixed_point as fp

_INT32_SPAN = 1 << 32

Buffer = Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]


@dataclass
class FloatNeurons:
    """One layer's float32 neuron parameters, leading dim sets or 1 (shared)."""

    bias: torch.Tensor | None  # the Dense bias, (sets, 1, n)
    alpha: torch.Tensor  # 1 - du: the current keeps alpha * u, (sets, 1, 1)
    beta: torch.Tensor  # 1 - dv
    vth: torch.Tensor
    v_bias: torch.Tensor  # (sets, 1, n)
    has_v_bias: bool
    has_memory: bool

    def take(self, start: int, stop: int) -> FloatNeurons:
        """The neurons of sets [start, stop) (parameters shared by all sets stay shared)."""
        return FloatNeurons(
            None if self.bias is None else _pick(self.bias, start, stop),
            _pick(self.alpha, start, stop),
            _pick(self.beta, start, stop),
            _pick(self.vth, start, stop),
            _pick(self.v_bias, start, stop),
            self.has_v_bias,
            self.has_memory,
        )


def float_neurons(p: dict[str, torch.Tensor]) -> FloatNeurons:
    """A layer's float32 parameters (leading dim sets or 1) as the update uses them."""
    alpha = (1.0 - p["du"]).view(-1, 1, 1)
    v_bias = p["v_bias"][:, None, :]
    return FloatNeurons(
        bias=p["bias"][:, None, :] if "bias" in p else None,
        alpha=alpha,
        beta=(1.0 - p["dv"]).view(-1, 1, 1),
        vth=p["vth"].view(-1, 1, 1),
        v_bias=v_bias,
        has_v_bias=bool((v_bias != 0).any()),
        has_memory=bool((alpha != 0).any()),
    )


@dataclass
class FixedNeurons:
    """One layer's neuron parameters in device integers (float64), leading dim sets or 1."""

    u_factor: torch.Tensor  # 4096 - (du + 1): the current keeps u * u_factor / 4096
    v_factor: torch.Tensor  # 4096 - dv
    vth: torch.Tensor  # threshold in activation units (vth << 6)
    bias: torch.Tensor  # mant << exp, (sets, 1, n)
    du_min: float
    dv_min: float
    has_memory: bool
    has_bias: bool
    v_decays: bool  # dv > 0 for some set (dv = 0 keeps v unchanged)

    def take(self, start: int, stop: int) -> FixedNeurons:
        """The neurons of sets [start, stop) (parameters shared by all sets stay shared)."""
        return FixedNeurons(
            _pick(self.u_factor, start, stop),
            _pick(self.v_factor, start, stop),
            _pick(self.vth, start, stop),
            _pick(self.bias, start, stop),
            self.du_min,
            self.dv_min,
            self.has_memory,
            self.has_bias,
            self.v_decays,
        )


def fixed_neurons(p: dict[str, torch.Tensor], layer: LayerSpec) -> FixedNeurons:
    """Quantise a layer's neuron parameters (float32, leading dim sets or 1) once per run."""
    bias = p["v_bias"] if "bias" not in p else p["v_bias"] + p["bias"]
    mant, bexp = fp.quantize_bias(bias, layer)
    du = fp.quantize_du(p["du"]).view(-1, 1, 1)
    dv = fp.quantize_dv(p["dv"]).view(-1, 1, 1)
    u_factor = fp.DECAY_UNITY - (du + fp.DU_OFFSET)
    bias_eff = (mant * 2.0**bexp)[:, None, :]
    return FixedNeurons(
        u_factor=u_factor,
        v_factor=fp.DECAY_UNITY - dv,
        vth=(fp.quantize_vth(p["vth"], layer) * float(1 << fp.VTH_SHIFT)).view(-1, 1, 1),
        bias=bias_eff,
        du_min=float(du.min()),
        dv_min=float(dv.min()),
        has_memory=bool((u_factor != 0).any()),
        has_bias=bool((bias_eff != 0).any()),
        v_decays=bool((dv != 0).any()),
    )


def _pick(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return x if x.shape[0] == 1 else x[start:stop]


def float_layer(
    layer: LayerSpec,
    q: FloatNeurons,
    a: torch.Tensor,
    spikes: torch.Tensor,
    buffer: Buffer,
    volts: torch.Tensor | None = None,
    currs: torch.Tensor | None = None,
) -> None:
    """snnTorch's CUBA LIF: writes 0/1 float spikes (and v, u when given) for every step."""
    steps, delay, sets = a.shape[0], layer.delay, spikes.shape[1]
    u = _zeros_like(buffer, "u", spikes[0], torch.float32)
    v = _zeros_like(buffer, "v", spikes[0], torch.float32)
    # Zero reset in the spiking step (Lava, snnTorch reset_delay=False) and no reset
    # never look at the previous step's reset, so they run in place.
    simple = layer.reset == "none" or (layer.reset == "zero" and not layer.reset_delay)
    recording = volts is not None or currs is not None
    if simple and q.bias is None and not (q.has_memory or q.has_v_bias or recording):
        # The common case, with nothing but the four in-place passes per step.
        zero_reset = layer.reset == "zero"
        for t in range(steps):
            v.mul_(q.beta)
            if t >= delay:
                v.add_(a[t - delay])
            torch.gt(v, q.vth, out=spikes[t])
            if zero_reset:
                reset_to_zero(v, spikes[t])
        return
    zero = u  # stays zero when there is no current memory
    for t in range(steps):
        # Dense output of step t - delay (Lava's Dense sends last step's buffer).
        a_t = a[t - delay] if t >= delay else None
        if q.bias is not None:  # the Dense bias joins W.s first, as nn.Linear computes it
            a_t = q.bias if a_t is None else a_t + q.bias
        if q.has_memory:
            cur = u.mul_(q.alpha)
            if a_t is not None:
                cur.add_(a_t)
        else:
            cur = zero if a_t is None else a_t.expand(sets, *a_t.shape[1:])
        if simple:
            v.mul_(q.beta).add_(cur)
            if q.has_v_bias:
                v.add_(q.v_bias)
            torch.gt(v, q.vth, out=spikes[t])
            if layer.reset == "zero":
                reset_to_zero(v, spikes[t])
        else:
            v = _snntorch_reset_step(layer, v, cur, q.beta, q.vth, q.v_bias, spikes[t])
        if volts is not None:
            volts[t] = v
        if currs is not None:
            currs[t] = cur


def fixed_layer(
    layer: LayerSpec,
    q: FixedNeurons,
    acc: torch.Tensor,
    spikes: torch.Tensor,
    buffer: Buffer,
    volts: torch.Tensor | None = None,
    currs: torch.Tensor | None = None,
) -> None:
    """Lava's PyLifModelBitAcc fed by PyDenseModelBitAcc's accumulator ``acc`` (W.s as exact
    integers in float32/64).  Writes 0/1 float spikes, and v and u (int64) when given.

    Where the bounds show every value stays below 2**23 (no wrap, no clip: a calibrated
    network), u and v are held in float32, exact for integers below 2**24, and only the
    decay products (up to 2**35) go through float64.  Elsewhere everything is float64.
    """
    exp = int(layer.fixed_weight_exp or 0)
    amax = abs_max(acc) * 2.0**exp + (1.0 if exp < 0 else 0.0)  # flooring adds at most 1
    steps, fed = acc.shape[0], acc.shape[0] - layer.delay  # steps with synaptic input
    vmax = float(fp.UV_MAX)
    # Worst-case magnitudes decide which wraps and clips can ever trigger: a decay that
    # keeps a fraction r sums at most min(steps, 1 / (1 - r)) terms.
    u_bound = amax * (1 << fp.ACT_SHIFT)
    if q.has_memory:
        u_bound *= min(fed, fp.DECAY_UNITY / (q.du_min + fp.DU_OFFSET))
    v_terms = fp.DECAY_UNITY / max(q.dv_min, 1.0)
    v_bound = min(u_bound, 2.0**31) * min(fed, v_terms) + float(q.bias.abs().max()) * min(
        steps, v_terms
    )
    bounds = _Bounds(
        wrap_act=amax >= 2**31 / (1 << fp.ACT_SHIFT),
        may_wrap=u_bound >= vmax,
        may_clip=v_bound >= vmax - 1,
    )
    small = not (bounds.wrap_act or bounds.may_wrap or bounds.may_clip)
    dtype = torch.float32 if small and acc.dtype == torch.float32 else torch.float64
    _fixed_steps(layer, q, acc, spikes, buffer, volts, currs, bounds, dtype)


@dataclass(frozen=True)
class _Bounds:
    wrap_act: bool  # the activation can pass int32 after its << 6
    may_wrap: bool  # u can pass the 24-bit wrap
    may_clip: bool  # v can reach the 24-bit clip


def _fixed_steps(
    layer: LayerSpec,
    q: FixedNeurons,
    acc: torch.Tensor,
    spikes: torch.Tensor,
    buffer: Buffer,
    volts: torch.Tensor | None,
    currs: torch.Tensor | None,
    bounds: _Bounds,
    dtype: torch.dtype,
) -> None:
    """The update loop, with u and v held in ``dtype`` (see fixed_layer)."""
    exp = int(layer.fixed_weight_exp or 0)
    # Lava: a = acc << exp (or >> -exp, flooring), sent as int32, then a << 6 in int32.
    # Scaling by powers of two is exact in floating point, so this stays in acc's dtype.
    act_gain = float(2**exp) * (1 << fp.ACT_SHIFT) if exp >= 0 else float(1 << fp.ACT_SHIFT)

    def activation(t: int) -> tuple[torch.Tensor | None, float]:
        """Step t's input (unscaled) and the gain to apply when adding it to u."""
        if t < layer.delay:
            return None, act_gain
        a_t = acc[t - layer.delay]
        if exp < 0:  # the arithmetic right shift floors; a * 2**exp is exact
            shifted = buffer("shifted", tuple(a_t.shape), a_t.dtype)
            a_t = torch.mul(a_t, 2.0**exp, out=shifted).floor_()
        if bounds.wrap_act:
            return _wrap_int32(_wrap_int32(a_t.double()) * act_gain), 1.0
        return a_t, act_gain

    vmax = float(fp.UV_MAX)
    # u is only needed as a tensor when it has memory, may wrap or is recorded.
    keep_u = q.has_memory or bounds.may_wrap or currs is not None
    u = _zeros_like(buffer, "u", spikes[0], dtype)
    v = _zeros_like(buffer, "v", spikes[0], dtype)
    scratch = None
    if dtype != torch.float64:
        scratch = _Scratch(
            like(buffer, "wide", spikes[0], torch.float64),
            like(buffer, "int32", spikes[0], torch.int32),
        )
    vth = q.vth.to(dtype)
    bias = q.bias.to(dtype)
    for t in range(len(spikes)):
        act, gain = activation(t)
        if q.has_memory:
            decay_toward_zero(u, q.u_factor, scratch)
            if act is not None:
                u.add_(act, alpha=gain)
        elif act is None:
            u.zero_()
        elif keep_u:
            torch.mul(act.expand(u.shape), gain, out=u)
        if bounds.may_wrap:
            u = _wrap_int32(u)
            wrapped = torch.where(u > vmax, u - 2 * vmax, u)
            u = torch.where(wrapped <= -vmax, u + 2 * vmax, wrapped)
        if q.v_decays:
            decay_toward_zero(v, q.v_factor, scratch)
        if keep_u:
            v.add_(u)
        elif act is not None:
            v.add_(act, alpha=gain)  # exact: integers below 2**24 (float32) or 2**53
        if q.has_bias:
            v.add_(bias)
        if bounds.may_wrap:
            v = _wrap_int32(v)
        if bounds.may_clip:
            v.clamp_(-vmax + 1, vmax - 1)
        torch.gt(v, vth, out=spikes[t])
        reset_to_zero(v, spikes[t])
        if volts is not None:
            volts[t] = v
        if currs is not None:
            currs[t] = u


def abs_max(x: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(x)
    return max(-float(lo), float(hi))


def decay_toward_zero(
    x: torch.Tensor, factor: torch.Tensor, scratch: _Scratch | None = None
) -> torch.Tensor:
    """Lava's ``sign(x*f) * (|x*f| >> 12)`` in place: the product is an exact integer in
    float64 and the division by 4096 is exact, so truncating it is the integer shift.

    A float32 ``x`` (|x| < 2**23) goes through ``scratch``: x * f / 4096 in float64 (x * f
    needs 35 bits), truncated toward zero by the conversion to int32 (C's cast; 1.6x
    faster on CPU than ``div(rounding_mode="trunc")``), back to float32.
    """
    if scratch is None:
        x.mul_(factor)
        return torch.div(x, float(fp.DECAY_UNITY), rounding_mode="trunc", out=x)
    scratch.wide.copy_(x).mul_(factor * (1.0 / fp.DECAY_UNITY))
    scratch.int32.copy_(scratch.wide)
    return x.copy_(scratch.int32)


@dataclass
class _Scratch:
    """Per-step buffers of the float32 decay (float64 product, int32 truncation)."""

    wide: torch.Tensor
    int32: torch.Tensor


def reset_to_zero(v: torch.Tensor, spikes: torch.Tensor) -> None:
    """Zero reset in the spiking step, in place: ``v -= v * spike`` with 0/1 float spikes.

    Exact (``v - v`` is 0, ``v - 0`` is v, fused or not), one pass like ``v *= 1 - spike``
    and several times faster on CPU than ``masked_fill_`` with a bool mask.
    """
    v.addcmul_(v, spikes, value=-1.0)


def _wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement int32 wrap of integer values (what numpy int32 arithmetic does)."""
    return torch.remainder(x + 2.0**31, float(_INT32_SPAN)) - 2.0**31


def _zeros_like(
    buffer: Buffer, tag: str, template: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Zero state shaped and laid out like ``template``, so the per-step updates of the
    state and the writes of the spikes walk memory in the same order."""
    return like(buffer, tag, template, dtype).zero_()


def like(buffer: Buffer, tag: str, template: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A dense buffer with ``template``'s shape and stride order."""
    order = physical_order(template)
    flat = buffer(tag, tuple(template.shape[d] for d in order), dtype)
    return flat.permute(*inverse(order))


def physical_order(x: torch.Tensor) -> tuple[int, ...]:
    """The dims of ``x`` sorted by stride, outermost first (ties keep logical order)."""
    return tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``x.permute(*order)``."""
    return tuple(sorted(range(len(order)), key=lambda d: order[d]))


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
