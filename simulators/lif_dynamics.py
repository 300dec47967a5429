"""The neuron update of one layer, for a block of parameter sets, a chunk of steps at a time.

The synaptic input of every step is already computed (one GEMM per layer and chunk); what
is left is sequential in time but independent per neuron, so the caller hands these loops
blocks small enough to keep the state in cache, and calls ``steps`` chunk after chunk.
Tensors are time-major logical views ``(T, S, B, N)`` of any memory layout; the input may
have one set that all S sets share.

``float32`` follows snnTorch's operation order exactly; ``loihi-fixed`` is Lava's
bit-accurate integer arithmetic held in floating point: float32 while bounds show every
value stays below 2**23 (exact), float64 otherwise (exact at these magnitudes and faster
than int64 on CPU and GPU), with the int32 and 24-bit wraps applied only where the bounds
say they can occur.  See ../shared/docs/LOIHI_FIXED_POINT.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from polystep_neuro.core.network import LayerSpec
from simulators import fixed_point as fp
from simulators import lif_kernels as kernels

_INT32_SPAN = 1 << 32

Buffer = Callable[[str, tuple[int, ...], torch.dtype], torch.Tensor]


@dataclass
class LowRankRows:
    """A low-rank first layer's synaptic input for some rows, left as its parts: the shared
    base product x W^T (rows, 1, B, n), the factors' products x Vt^T (sets, rows, B, r) and
    U^T (sets, r, n).  The fused float32 update sums them as it reads them (no pass writes
    the sum); everything else takes ``materialise()``, the summed (rows, sets, B, n)."""

    base: torch.Tensor
    xv: torch.Tensor
    ut: torch.Tensor
    materialise: Callable[[], torch.Tensor]


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
    u_scale: torch.Tensor  # u_factor / 4096 (exact)
    v_scale: torch.Tensor
    vth: torch.Tensor  # threshold in activation units (vth << 6)
    bias: torch.Tensor  # mant << exp, (sets, 1, n)
    du_min: float
    dv_min: float
    bias_max: float  # largest |bias|
    has_memory: bool
    has_bias: bool
    v_decays: bool  # dv > 0 for some set (dv = 0 keeps v unchanged)

    def take(self, start: int, stop: int) -> FixedNeurons:
        """The neurons of sets [start, stop) (parameters shared by all sets stay shared)."""
        return FixedNeurons(
            _pick(self.u_factor, start, stop),
            _pick(self.v_factor, start, stop),
            _pick(self.u_scale, start, stop),
            _pick(self.v_scale, start, stop),
            _pick(self.vth, start, stop),
            _pick(self.bias, start, stop),
            self.du_min,
            self.dv_min,
            self.bias_max,
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
    v_factor = fp.DECAY_UNITY - dv
    bias_eff = (mant * 2.0**bexp)[:, None, :]
    return FixedNeurons(
        u_factor=u_factor,
        v_factor=v_factor,
        u_scale=u_factor / fp.DECAY_UNITY,
        v_scale=v_factor / fp.DECAY_UNITY,
        vth=(fp.quantize_vth(p["vth"], layer) * float(1 << fp.VTH_SHIFT)).view(-1, 1, 1),
        bias=bias_eff,
        du_min=float(du.min()),
        dv_min=float(dv.min()),
        bias_max=float(bias_eff.abs().max()),
        has_memory=bool((u_factor != 0).any()),
        has_bias=bool((bias_eff != 0).any()),
        v_decays=bool((dv != 0).any()),
    )


def _pick(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return x if x.shape[0] == 1 else x[start:stop]


class FloatLIF:
    """snnTorch's CUBA LIF for one block of sets, stepped a chunk of steps at a time.

    ``template`` gives the shape (sets, B, n) and memory layout of the state; ``steps``
    writes 0/1 float spikes (and v, u when given) of steps [start, stop).
    """

    def __init__(
        self, layer: LayerSpec, q: FloatNeurons, template: torch.Tensor, buffer: Buffer
    ) -> None:
        self.layer, self.q, self.buffer = layer, q, buffer
        self.u = _zeros_like(buffer, "u", template, torch.float32)
        self.v = _zeros_like(buffer, "v", template, torch.float32)
        # Zero reset in the spiking step (Lava, snnTorch reset_delay=False) and no reset
        # never look at the previous step's reset; the others keep it in ``self.reset``.
        self.simple = layer.reset == "none" or (layer.reset == "zero" and not layer.reset_delay)
        self.reset = None if self.simple else like(buffer, "reset", template, torch.float32)
        self._kernel_args: dict[tuple, tuple] = {}  # see _fused

    def steps(
        self,
        start: int,
        stop: int,
        acc: torch.Tensor | None,
        row0: int,
        spikes: torch.Tensor,
        volts: torch.Tensor | None = None,
        currs: torch.Tensor | None = None,
    ) -> None:
        """Steps [start, stop).  ``acc[r - row0]`` is W.s of input row r, which reaches the
        neurons at step r + delay (Lava's Dense sends last step's buffer); ``spikes``,
        ``volts`` and ``currs`` are indexed from ``start``."""
        if isinstance(acc, LowRankRows):
            rank = acc.ut.shape[1]
            parts = (acc.base, acc.xv, acc.ut)
            fits = rank <= kernels.MAX_FUSED_RANK and kernels.pays(spikes)
            if fits and kernels.usable(*parts, spikes, volts, currs):
                self._fused(start, stop, acc, row0, spikes, volts, currs)
                return
            acc = acc.materialise()
        merged = kernels.route(spikes, acc, volts, currs, self.u, self.v, shared=False)
        if merged is not None:
            self._fused(start, stop, acc, row0, spikes, volts, currs, merged)
            return
        layer, q, u, v = self.layer, self.q, self.u, self.v
        delay, sets = layer.delay, spikes.shape[1]
        recording = volts is not None or currs is not None
        if self.simple and q.bias is None and not (q.has_memory or q.has_v_bias or recording):
            # The common case, with nothing but the four in-place passes per step.
            zero_reset = layer.reset == "zero"
            for t in range(start, stop):
                v.mul_(q.beta)
                if t >= delay:
                    v.add_(acc[t - delay - row0])  # type: ignore[index]
                out = spikes[t - start]
                torch.gt(v, q.vth, out=out)
                if zero_reset:
                    reset_to_zero(v, out)
            return
        zero = u  # stays zero when there is no current memory
        for t in range(start, stop):
            a_t = acc[t - delay - row0] if t >= delay else None  # type: ignore[index]
            if q.bias is not None:  # the Dense bias joins W.s first, as nn.Linear does
                if a_t is None:
                    a_t = q.bias
                else:
                    shape = (max(a_t.shape[0], q.bias.shape[0]), *a_t.shape[1:])
                    a_t = torch.add(a_t, q.bias, out=self.buffer("biased", shape, a_t.dtype))
            if q.has_memory:
                cur = u.mul_(q.alpha)
                if a_t is not None:
                    cur.add_(a_t)
            else:
                cur = zero if a_t is None else a_t.expand(sets, *a_t.shape[1:])
            out = spikes[t - start]
            if self.simple:
                v.mul_(q.beta).add_(cur)
                if q.has_v_bias:
                    v.add_(q.v_bias)
                torch.gt(v, q.vth, out=out)
                if layer.reset == "zero":
                    reset_to_zero(v, out)
            else:
                self._reset_step(cur, out)
            if volts is not None:
                volts[t - start] = v
            if currs is not None:
                currs[t - start] = cur

    def _fused(
        self,
        start: int,
        stop: int,
        acc: torch.Tensor | None,
        row0: int,
        spikes: torch.Tensor,
        volts: torch.Tensor | None,
        currs: torch.Tensor | None,
        merged: bool = False,
    ) -> None:
        """``steps`` in one pass per neuron row (simulators.lif_kernels, bit for bit);
        ``merged``: each set's B rows as one (kernels.merges)."""
        batch, n = spikes.shape[2:]
        copies = batch if merged else 1
        low = acc if isinstance(acc, LowRankRows) else None
        rank = 0 if low is None else low.ut.shape[1]
        record = (volts is not None, currs is not None, rank)
        static = self._kernel_args.get((*record, merged))
        if static is None:  # what stays the same from chunk to chunk
            layer, q = self.layer, self.q
            kernel = kernels.float_kernel(
                self.simple, kernels.RESET_CODES[layer.reset], layer.reset_delay,
                layer.neuron == "leaky", q.has_memory, q.bias is not None, q.has_v_bias, *record,
            )  # fmt: skip
            params = (
                kernels.per_set(q.alpha), kernels.per_set(q.beta), kernels.per_set(q.vth),
                kernels.per_neuron(q.bias, n, copies), kernels.per_neuron(q.v_bias, n, copies),
            )  # fmt: skip
            static = self._kernel_args[(*record, merged)] = (
                kernel,
                (*kernels.flat(self.v), *kernels.flat(self.u)),
                params,
            )
        kernel, state, params = static
        if low is None:
            factors = kernels.NO_FACTORS
        else:  # the base product, x.Vt^T as (rows, sets, B, r), U^T flat
            factors = (*kernels.flat(low.xv.permute(1, 0, 2, 3)), low.ut.reshape(-1).numpy())
            acc = low.base
        kernels.launch(
            kernel, start, stop, self.layer.delay, row0, acc, (), state, spikes, volts, currs,
            params, (batch // copies, n * copies, *factors),
        )  # fmt: skip

    def _reset_step(self, cur: torch.Tensor, spikes: torch.Tensor) -> None:
        """One membrane step with snnTorch's reset rules (see LOIHI_FIXED_POINT.md), in
        place and in snnTorch's operation order (each in-place step rounds as its
        expression does): the reset signal comes from the previous membrane; without
        ``reset_delay`` this step's spike is reset at once, minus what the delayed reset
        already removed."""
        layer, q, v, r = self.layer, self.q, self.v, self.reset
        assert r is not None
        torch.gt(v, q.vth, out=r)  # 0/1: the previous membrane was above threshold
        if layer.reset == "zero" and layer.neuron == "leaky":  # beta * (1 - r) * v + ...
            keep = r.neg_().add_(1.0).mul_(q.beta)
            v.mul_(keep)
        else:
            v.mul_(q.beta)
        v.add_(cur)
        if q.has_v_bias:
            v.add_(q.v_bias)
        if layer.reset == "subtract":  # ... - r * vth
            v.addcmul_(r, q.vth, value=-1.0)
        elif layer.neuron != "leaky":  # snn.Synaptic zeroes the whole new membrane
            v.mul_(r.neg_().add_(1.0))
        torch.gt(v, q.vth, out=spikes)
        if not layer.reset_delay and layer.reset == "subtract":
            v.addcmul_(r.neg_().add_(spikes), q.vth, value=-1.0)  # minus (spike - r) * vth


class FixedLIF:
    """Lava's PyLifModelBitAcc for one block of sets, fed by PyDenseModelBitAcc's
    accumulator (W.s as exact integers in float32/64), a chunk of steps at a time.

    While the bounds show every value stays below 2**23 (no wrap, no clip: a calibrated
    network), u and v are held in float32, exact for integers below 2**24, and only the
    decay products (up to 2**35) go through float64.  The bounds grow with the largest
    input seen so far; once they pass, the state moves to float64 (exactly) for good and
    the wraps and clips they allow are applied.
    """

    def __init__(
        self,
        layer: LayerSpec,
        q: FixedNeurons,
        template: torch.Tensor,
        buffer: Buffer,
        acc_dtype: torch.dtype,
    ) -> None:
        self.layer, self.q, self.template, self.buffer = layer, q, template, buffer
        self.exp = int(layer.fixed_weight_exp or 0)
        # Lava: a = acc << exp (or >> -exp, flooring), sent as int32, then a << 6 in int32.
        # Scaling by powers of two is exact in floating point, so this stays in acc's dtype.
        exp = self.exp
        self.gain = float(2**exp) * (1 << fp.ACT_SHIFT) if exp >= 0 else float(1 << fp.ACT_SHIFT)
        self.amax = 0.0  # largest |W.s| seen so far
        self.bounds = _Bounds(False, False, False)
        self.u: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self._use(torch.float32 if acc_dtype == torch.float32 else torch.float64)

    def _use(self, dtype: torch.dtype) -> None:
        """Hold the state in ``dtype`` (zero at the start, else converted exactly)."""
        tag = "32" if dtype == torch.float32 else "64"
        u = like(self.buffer, "u" + tag, self.template, dtype)
        v = like(self.buffer, "v" + tag, self.template, dtype)
        if self.u is None or self.v is None:
            u.zero_()
            v.zero_()
        else:
            u.copy_(self.u)
            v.copy_(self.v)
        self.u, self.v, self.dtype = u, v, dtype
        self.scratch = None
        if dtype != torch.float64:
            self.scratch = _Scratch(
                like(self.buffer, "wide", self.template, torch.float64),
                like(self.buffer, "int32", self.template, torch.int32),
            )
        self.vth = self.q.vth.to(dtype)
        self.bias = self.q.bias.to(dtype)
        self._kernel_args: dict[tuple, tuple] = {}  # see _fused

    def _update_bounds(self, acc: torch.Tensor | None, stop: int) -> None:
        """Worst-case magnitudes up to step ``stop`` decide which wraps and clips can
        trigger: a decay that keeps a fraction r sums at most min(n, 1 / (1 - r)) terms."""
        q = self.q
        if acc is not None and acc.numel():
            self.amax = max(self.amax, abs_max(acc))
        amax = self.amax * 2.0**self.exp + (1.0 if self.exp < 0 else 0.0)  # floor: +1 at most
        fed = max(0, stop - self.layer.delay)  # steps that received input
        vmax = float(fp.UV_MAX)
        u_bound = amax * (1 << fp.ACT_SHIFT)
        if q.has_memory:
            u_bound *= min(fed, fp.DECAY_UNITY / (q.du_min + fp.DU_OFFSET))
        v_terms = fp.DECAY_UNITY / max(q.dv_min, 1.0)
        v_bound = min(u_bound, 2.0**31) * min(fed, v_terms) + q.bias_max * min(stop, v_terms)
        self.bounds = _Bounds(
            wrap_act=amax >= 2**31 / (1 << fp.ACT_SHIFT),
            may_wrap=u_bound >= vmax,
            may_clip=v_bound >= vmax - 1,
        )
        if self.dtype != torch.float64 and self.bounds != _Bounds(False, False, False):
            self._use(torch.float64)

    def steps(
        self,
        start: int,
        stop: int,
        acc: torch.Tensor | None,
        row0: int,
        spikes: torch.Tensor,
        volts: torch.Tensor | None = None,
        currs: torch.Tensor | None = None,
    ) -> None:
        """Steps [start, stop), with ``acc`` and the outputs as in FloatLIF.steps; v and u
        are written as device integers.

        Long because it is the inner loop: splitting it would cost a call per step per block."""
        if isinstance(acc, LowRankRows):
            acc = acc.materialise()
        layer, q = self.layer, self.q
        delay, exp = layer.delay, self.exp
        if acc is not None:
            first, last = max(start - delay, 0) - row0, stop - delay - row0
            self._update_bounds(acc[first:last] if last > first else None, stop)
        else:
            self._update_bounds(None, stop)
        bounds = self.bounds
        merged = kernels.route(spikes, acc, volts, currs, self.u, self.v, shared=True)
        if self.scratch is not None and merged is not None:  # a float32 state (the bounds hold)
            self._fused(start, stop, acc, row0, spikes, volts, currs, merged)
            return
        gain = self.gain  # (see __init__)
        vmax = float(fp.UV_MAX)
        # u is only needed as a tensor when it has memory, may wrap or is recorded.
        keep_u = q.has_memory or bounds.may_wrap or currs is not None
        u, v, scratch = self.u, self.v, self.scratch
        assert u is not None and v is not None
        for t in range(start, stop):
            act, act_gain = None, gain
            if t >= delay:
                act = acc[t - delay - row0]  # type: ignore[index]
                if exp < 0:  # the arithmetic right shift floors; a * 2**exp is exact
                    shifted = self.buffer("shifted", tuple(act.shape), act.dtype)
                    act = torch.mul(act, 2.0**exp, out=shifted).floor_()
                if bounds.wrap_act:
                    act, act_gain = _wrap_int32(_wrap_int32(act.double()) * gain), 1.0
            if q.has_memory:
                if scratch is None:
                    decay_toward_zero(u, q.u_factor)
                else:
                    decay_toward_zero_f32(u, q.u_scale, scratch)
                if act is not None:
                    u.add_(act, alpha=act_gain)
            elif act is None:
                u.zero_()
            elif keep_u:
                torch.mul(act.expand(u.shape), act_gain, out=u)
            if bounds.may_wrap:
                u = _wrap_int32(u)
                wrapped = torch.where(u > vmax, u - 2 * vmax, u)
                u = torch.where(wrapped <= -vmax, u + 2 * vmax, wrapped)
            if q.v_decays:
                if scratch is None:
                    decay_toward_zero(v, q.v_factor)
                else:
                    decay_toward_zero_f32(v, q.v_scale, scratch)
            if keep_u:
                v.add_(u)
            elif act is not None:
                v.add_(act, alpha=act_gain)  # exact: integers below 2**24 (float32) or 2**53
            if q.has_bias:
                v.add_(self.bias)
            if bounds.may_wrap:
                v = _wrap_int32(v)
            if bounds.may_clip:
                v.clamp_(-vmax + 1, vmax - 1)
            out = spikes[t - start]
            torch.gt(v, self.vth, out=out)
            reset_to_zero(v, out)
            if volts is not None:
                volts[t - start] = v
            if currs is not None:
                currs[t - start] = u
        self.u, self.v = u, v

    def _fused(
        self,
        start: int,
        stop: int,
        acc: torch.Tensor | None,
        row0: int,
        spikes: torch.Tensor,
        volts: torch.Tensor | None,
        currs: torch.Tensor | None,
        merged: bool = False,
    ) -> None:
        """``steps`` for a float32 state inside its bounds, one pass per neuron row
        (simulators.lif_kernels, bit for bit); ``merged`` as in FloatLIF._fused."""
        assert self.u is not None and self.v is not None
        batch, n = spikes.shape[2:]
        copies = batch if merged else 1
        record = (volts is not None, currs is not None)
        static = self._kernel_args.get((*record, merged))
        if static is None:  # what stays the same from chunk to chunk (until _use)
            q, exp = self.q, self.exp
            kernel = kernels.fixed_kernel(
                q.has_memory, q.has_memory or record[1], q.v_decays, q.has_bias, exp < 0, *record
            )
            params = (
                kernels.per_set(q.u_scale), kernels.per_set(q.v_scale), kernels.per_set(self.vth),
                kernels.per_neuron(self.bias, n, copies),
            )  # fmt: skip
            scaling = (np.float32(2.0**exp), np.float32(self.gain))
            static = self._kernel_args[(*record, merged)] = (
                kernel,
                scaling,
                (*kernels.flat(self.v), *kernels.flat(self.u)),
                params,
            )
        kernel, scaling, state, params = static
        kernels.launch(
            kernel, start, stop, self.layer.delay, row0, acc, scaling, state, spikes, volts,
            currs, params, (batch // copies, n * copies),
        )  # fmt: skip


@dataclass(frozen=True)
class _Bounds:
    wrap_act: bool  # the activation can pass int32 after its << 6
    may_wrap: bool  # u can pass the 24-bit wrap
    may_clip: bool  # v can reach the 24-bit clip


def abs_max(x: torch.Tensor) -> float:
    """max |x|: ``aminmax`` copies a strided view (a time slice of set-major synaptic
    input) first, where separate ``amin`` and ``amax`` read it in place."""
    if x.numel() == 0:
        return 0.0
    if x.is_contiguous():
        lo, hi = torch.aminmax(x)
    else:
        lo, hi = x.amin(), x.amax()
    return max(-float(lo), float(hi))


def decay_toward_zero(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Lava's ``sign(x*f) * (|x*f| >> 12)`` in place: the product is an exact integer in
    float64 and the division by 4096 is exact, so truncating it is the integer shift."""
    x.mul_(factor)
    return torch.div(x, float(fp.DECAY_UNITY), rounding_mode="trunc", out=x)


def decay_toward_zero_f32(x: torch.Tensor, scale: torch.Tensor, scratch: _Scratch) -> None:
    """The same for float32 ``x`` (|x| < 2**23), ``scale`` = f / 4096: the product in
    float64 (x * f needs 35 bits; the scale is dyadic, so x * scale is exact there), then
    truncated toward zero by the conversion to int32 (C's cast; on CPU a copy and a
    multiply cost less than one mixed-dtype multiply, and the cast less than
    ``div(rounding_mode="trunc")``), back to float32."""
    scratch.wide.copy_(x).mul_(scale)
    scratch.int32.copy_(scratch.wide)
    x.copy_(scratch.int32)


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
