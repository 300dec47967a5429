"""Fused CPU neuron updates: a chunk of steps of one block of sets in one pass (numba).

The reference update in :mod:`simulators.lif_dynamics` is a handful of whole-tensor torch
passes per step (decay, input, threshold, reset, ...), each reading and writing the layer's
state.  Here each neuron row (one set, one sample) is walked through every step of the
chunk while it sits in L1, with the same operations in the same order, so the results are
bit for bit the reference's (tests/test_lif_kernels.py compares every variant).

Used on CPU where numba is installed, every tensor has unit stride along the neurons and
the rows are long enough to pay (``pays``; a set's rows merge into one where its samples lie
back to back, ``merges``); with several torch threads the sets of a block are shared among
them (``over_sets``), for loihi-fixed and the low-rank sums only.  Elsewhere (CUDA, plain
float32 with several threads, other layouts, loihi-fixed states held in float64) the
reference runs.
``reference_updates()`` forces the reference path (parity tests, A/B benchmarks), as does
``POLYSTEP_FUSED_LIF=0`` in the environment.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

try:  # a speed-up: without numba every update takes the reference path
    import numba
    import numba.extending
except ImportError:  # pragma: no cover - numba is a dependency; kept for stripped installs
    numba = None

_enabled = numba is not None and os.environ.get("POLYSTEP_FUSED_LIF", "1") != "0"

# Reset kinds as the kernels take them.
RESET_CODES = {"none": 0, "zero": 1, "subtract": 2}
# The largest rank of a low-rank first layer whose factors the float kernel sums itself.
MAX_FUSED_RANK = 4


def active() -> bool:
    """Whether updates take the fused path where their tensors allow it."""
    return _enabled


@contextlib.contextmanager
def reference_updates() -> Iterator[None]:
    """Run every neuron update through the reference torch passes inside the block."""
    global _enabled
    was, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = was


# Where the fused update pays (one CPU thread, AMD EPYC Zen 5, a 5-step chunk): a row of n
# neurons costs about 20 ns of loop overhead per step, so narrow rows lose to the
# reference's whole-block passes (n = 10 in blocks of 4 sets: 0.47x its rate, of 16:
# 0.20x; n = 64, 4 sets: 0.79x), while rows of 128 or more win (1.1-2.2x), as do rows of
# 32-64 in blocks too small for the passes' per-call cost (up to 8 Ki neurons: 1.1-1.3x).
WIDE_ROW = 128
NARROW_ROW = 32
SMALL_BLOCK = 8192


# A set's B rows go as one row of B * n where every tensor holds its samples back to back
# and that row stays this small: fewer, longer rows (n = 10: 2.2-3.6x the passes instead of
# 0.2-1.1x; n = 128: 2.2-2.9x instead of 1.1-1.5x).
MERGED_ROW_MAX = 1 << 14


def merges(spikes: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether each set's B rows of n neurons can go through the kernel as one row of
    B * n (at most MERGED_ROW_MAX, samples back to back in ``spikes`` and every other
    tensor; the per-neuron parameters are then tiled B times)."""
    batch, n = spikes.shape[-2:]
    if batch * n > MERGED_ROW_MAX:
        return False
    return all(
        t is None or (t.shape[-2] == batch and (batch == 1 or t.stride(-2) == n))
        for t in (spikes, *tensors)
    )


def pays(spikes: torch.Tensor, merged: bool = False, shared: bool = True) -> bool:
    """Whether the fused update is expected to beat the reference on this block of
    ``spikes`` (steps, sets, B, n), its rows ``merged`` or not.  With several torch threads
    the block's sets are shared among them (over_sets), so it needs a set for each, and
    pays only where ``shared`` says sharing was measured to win: loihi-fixed and the
    low-rank sums (2 threads: 1.04-1.57x the reference), not plain float32 (0.92-1.05x)."""
    sets, batch, n = spikes.shape[1:]
    threads = torch.get_num_threads()
    if threads > 1 and (not shared or sets < threads):
        return False
    row = batch * n if merged else n
    return row >= WIDE_ROW or (row >= NARROW_ROW and sets * batch * n <= SMALL_BLOCK)


def route(spikes: torch.Tensor, *tensors: torch.Tensor | None, shared: bool) -> bool | None:
    """How a block's update goes: None for the reference passes, else the fused loop with
    its rows merged (True) or not (False); ``tensors`` are the block's others (input,
    state, traces); ``shared`` as in ``pays``."""
    merged = merges(spikes, *tensors)
    if pays(spikes, merged, shared) and usable(spikes, *tensors):
        return merged
    return None


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the fused path can take these tensors (CPU, unit stride along neurons)."""
    if not _enabled:
        return False
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.stride(-1) != 1:
            return False
    return True


# The helper threads that take a share of a block's sets (see over_sets), with the process
# that made them: a forked child finds the threads gone and makes its own.
_pool: tuple[int, int, concurrent.futures.ThreadPoolExecutor] | None = None


def _helpers(count: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != count:
        _pool = (os.getpid(), count, concurrent.futures.ThreadPoolExecutor(count, "fused-lif"))
    return _pool[2]


def over_sets(call: Callable[[int, int], None], sets: int) -> None:
    """``call(first, last)`` over ``[0, sets)`` in as many shares as torch has threads: the
    kernels release the GIL, so the shares run at once, each on its own sets (no two touch
    the same memory).  The calling thread takes the first share."""
    parts = min(torch.get_num_threads(), sets)
    if parts <= 1:
        call(0, sets)
        return
    bounds = [sets * i // parts for i in range(parts + 1)]
    pool = _helpers(parts - 1)
    shares = [pool.submit(call, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    call(bounds[0], bounds[1])
    for share in shares:
        share.result()


def launch(
    kernel: Callable[..., None],
    start: int,
    stop: int,
    delay: int,
    row0: int,
    acc: torch.Tensor | None,
    extra: tuple,
    state: tuple,
    spikes: torch.Tensor,
    volts: torch.Tensor | None,
    currs: torch.Tensor | None,
    params: tuple,
    tail: tuple,
) -> None:
    """A chunk kernel (float_kernel's or fixed_kernel's) on one block, its sets shared among
    the threads: the arguments both kernels take in the same order around what differs
    (``extra``: fixed point's shift and gain; ``tail``: the row counts and, for float, the
    low-rank factors)."""
    head = (
        start, stop, delay, row0, acc is not None, *flat(acc),
        1 if acc is None else acc.shape[1], *extra, *state, *flat(spikes), *flat(volts),
        *flat(currs), *params,
    )  # fmt: skip
    over_sets(lambda first, last: kernel(*head, first, last, *tail), spikes.shape[1])


_NO_ARRAY = np.zeros(1, dtype=np.float32)
_NO_STRIDES = (0, 0, 0, 0)
NO_FACTORS = (_NO_ARRAY, _NO_STRIDES, _NO_ARRAY)  # the float kernel's xv, its strides, ut


def flat(t: torch.Tensor | None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A tensor as the kernels index it: its storage from its first element as a 1-D numpy
    array (no copy), and its strides in elements, padded on the left to four dims."""
    if t is None:
        return _NO_ARRAY, _NO_STRIDES
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    array = torch.as_strided(t, (extent,), (1,), t.storage_offset()).numpy()
    strides = (0,) * (4 - t.dim()) + tuple(t.stride())
    return array, strides  # type: ignore[return-value]


def per_set(x: torch.Tensor) -> np.ndarray:
    """A (sets or 1, 1, 1) parameter as a 1-D array (one value per set, or one for all)."""
    return x.reshape(-1).contiguous().numpy()


def per_neuron(x: torch.Tensor | None, n: int, copies: int = 1) -> np.ndarray:
    """A (sets or 1, 1, n) float32 parameter as one flat array, set after set, each set's n
    values repeated ``copies`` times (merged rows); zeros when absent."""
    if x is None:
        return np.zeros(n * copies, dtype=np.float32)
    values = x.reshape(-1, n)
    if copies > 1:
        values = values.repeat(1, copies)
    return values.reshape(-1).contiguous().numpy()


if numba is not None:

    @numba.extending.intrinsic
    def _fma(typingctx, a, b, c):  # type: ignore[no-untyped-def]
        """a * b + c rounded once (LLVM's fma), as torch's addcmul sums on CPU."""
        sig = numba.types.float32(numba.types.float32, numba.types.float32, numba.types.float32)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.fma(*args)

        return sig, codegen


def _jit(**options):  # type: ignore[no-untyped-def]
    """numba.njit with the kernels' options, cached on disk (compiled once per machine and
    combination of options), or the plain function where numba is missing."""

    def wrap(fn):  # type: ignore[no-untyped-def]
        if numba is None:
            return fn
        return numba.njit(cache=True, nogil=True, boundscheck=False, **options)(fn)

    return wrap


@functools.cache
def float_kernel(simple, reset, reset_delay, leaky, has_memory, has_bias, has_v_bias, record_v,
                 record_c, rank):  # type: ignore[no-untyped-def]  # fmt: skip
    """FloatLIF.steps compiled for one layer's options, held as constants: they fold away,
    so no branch stays inside the neuron loop (one kept it from vectorising).  The closure
    holds nothing but these constants, so numba's cache key for it is stable."""

    opts = _options((simple, reset, reset_delay, leaky, has_memory, has_bias, has_v_bias,
                     record_v, record_c, rank), (1, 2, 1, 1, 1, 1, 1, 1, 1, 4))  # fmt: skip

    def float_chunk(start, stop, delay, row0, has_acc, acc, ast, acc_sets, v, vst, u, ust,
                    spk, sst, volts, volst, currs, curst, alpha, beta, vth, bias, v_bias,
                    first_set, last_set, batch, n, xv, xst, ut):  # fmt: skip
        """Steps [start, stop) of every (set, sample) row, in FloatLIF.steps' order of
        operations (``cur`` is zero where the reference adds its zero state).  Arrays are
        flat and indexed by offsets (a slice per row and step costs reference counting that
        took half the time).  ``rank`` > 0: the input comes as a low-rank first layer's
        parts (lif_dynamics.LowRankRows: ``acc`` the shared base product, ``xv`` and ``ut``
        the factors), summed in the reference's order, each product added with one rounding
        as the reference's addcmul does on CPU."""
        for s in range(first_set, last_set):
            a_set = s if acc_sets > 1 else 0
            al = alpha[s if alpha.shape[0] > 1 else 0]
            be = beta[s if beta.shape[0] > 1 else 0]
            th = vth[s if vth.shape[0] > 1 else 0]
            b0 = (s if bias.shape[0] > n else 0) * n
            vb0 = (s if v_bias.shape[0] > n else 0) * n
            for b in range(batch):
                v0 = s * vst[1] + b * vst[2]
                u0 = s * ust[1] + b * ust[2]
                for t in range(start, stop):
                    k = t - start
                    s0 = k * sst[0] + s * sst[1] + b * sst[2]
                    w0 = k * volst[0] + s * volst[1] + b * volst[2]
                    c0 = k * curst[0] + s * curst[1] + b * curst[2]
                    if has_acc and t >= delay:
                        r = t - delay - row0
                        a0 = r * ast[0] + a_set * ast[1] + b * ast[2]
                        x0 = r * xst[0] + s * xst[1] + b * xst[2]
                        _float_row(acc, a0, v, v0, u, u0, spk, s0, volts, w0, currs, c0, al,
                                   be, th, bias, b0, v_bias, vb0, n, xv, x0, ut, s * rank * n,
                                   True, opts)  # fmt: skip
                    else:
                        _float_row(acc, 0, v, v0, u, u0, spk, s0, volts, w0, currs, c0, al,
                                   be, th, bias, b0, v_bias, vb0, n, xv, 0, ut, 0, False,
                                   opts)  # fmt: skip

    return _jit()(float_chunk)


def _options(flags: tuple[bool | int, ...], widths: tuple[int, ...] | None = None) -> int:
    """The kernels' options as one integer, flag after flag from bit 0, each ``widths[i]``
    bits wide (default one); the row functions take them apart with the same layout."""
    opts, shift = 0, 0
    for flag, width in zip(flags, widths or (1,) * len(flags), strict=True):
        opts |= int(flag) << shift
        shift += width
    return opts


@_jit(inline="always")
def _float_row(acc, a0, v, v0, u, u0, spk, s0, volts, w0, currs, c0, al, be, th, bias, b0,
               v_bias, vb0, n, xv, x0, ut, f0, fed, opts):  # fmt: skip
    """One row of neurons through one step, inlined into float_chunk with ``fed`` and
    ``opts`` (the options, see _options) constant, so their branches fold away.  Offsets
    are unsigned: a signed index keeps numba's wraparound check for negative indices, which
    stops the loop from vectorising.  (Calls take at most 30 arguments: more make Python
    pass them as a tuple, which numba does not inline.)"""
    simple, reset, reset_delay, leaky = opts & 1, (opts >> 1) & 3, opts & 8, opts & 16
    has_memory, has_bias, has_v_bias = opts & 32, opts & 64, opts & 128
    record_v, record_c, rank = opts & 256, opts & 512, opts >> 10
    zero = np.float32(0.0)
    one = np.float32(1.0)
    a0, v0, u0, s0 = np.uint64(a0), np.uint64(v0), np.uint64(u0), np.uint64(s0)
    w0, c0, b0, vb0 = np.uint64(w0), np.uint64(c0), np.uint64(b0), np.uint64(vb0)
    f1, f2, f3 = np.uint64(f0 + n), np.uint64(f0 + 2 * n), np.uint64(f0 + 3 * n)
    f0 = np.uint64(f0)
    p0 = xv[x0] if fed and rank >= 1 else zero  # this row's products x.Vt^T
    p1 = xv[x0 + 1] if fed and rank >= 2 else zero
    p2 = xv[x0 + 2] if fed and rank >= 3 else zero
    p3 = xv[x0 + 3] if fed and rank >= 4 else zero
    for i in range(np.uint64(n)):
        if fed:
            a = acc[a0 + i]
            if rank >= 1:
                a = _fma(p0, ut[f0 + i], a)
            if rank >= 2:
                a = _fma(p1, ut[f1 + i], a)
            if rank >= 3:
                a = _fma(p2, ut[f2 + i], a)
            if rank >= 4:
                a = _fma(p3, ut[f3 + i], a)
            if has_bias:
                a = a + bias[b0 + i]
        elif has_bias:
            a = bias[b0 + i]
        else:
            a = zero
        if has_memory:
            cur = u[u0 + i] * al
            if fed or has_bias:
                cur = cur + a
            u[u0 + i] = cur
        else:
            cur = a
        x = v[v0 + i]
        if simple:
            x = x * be + cur
            if has_v_bias:
                x = x + v_bias[vb0 + i]
            sp = one if x > th else zero
            if reset == 1:
                x = x - x * sp
        else:
            r = one if x > th else zero  # the previous membrane's reset
            if reset == 1 and leaky:
                x = x * ((one - r) * be)
            else:
                x = x * be
            x = x + cur
            if has_v_bias:
                x = x + v_bias[vb0 + i]
            if reset == 2:
                x = x - r * th
            elif not leaky:
                x = x * (one - r)
            sp = one if x > th else zero
            if not reset_delay and reset == 2:
                x = x - (sp - r) * th
        v[v0 + i] = x
        spk[s0 + i] = sp
        if record_v:
            volts[w0 + i] = x
        if record_c:
            currs[c0 + i] = cur


@functools.cache
def fixed_kernel(has_memory, keep_u, v_decays, has_bias, negative_exp, record_v, record_c):  # type: ignore[no-untyped-def]  # fmt: skip
    """FixedLIF.steps compiled for one layer's options (see float_kernel)."""

    opts = _options((has_memory, keep_u, v_decays, has_bias, negative_exp, record_v, record_c))

    def fixed_chunk(start, stop, delay, row0, has_acc, acc, ast, acc_sets, shift, gain, v,
                    vst, u, ust, spk, sst, volts, volst, currs, curst, u_scale, v_scale, vth,
                    bias, first_set, last_set, batch, n):  # fmt: skip
        """Float32 states inside their bounds (no wrap, no clip: every value an integer
        below 2**24), the decays' products exact in float64 and truncated toward zero as
        the reference's int32 cast does."""
        for s in range(first_set, last_set):
            a_set = s if acc_sets > 1 else 0
            us = u_scale[s if u_scale.shape[0] > 1 else 0]
            vs = v_scale[s if v_scale.shape[0] > 1 else 0]
            th = vth[s if vth.shape[0] > 1 else 0]
            b0 = (s if bias.shape[0] > n else 0) * n
            for b in range(batch):
                v0 = s * vst[1] + b * vst[2]
                u0 = s * ust[1] + b * ust[2]
                for t in range(start, stop):
                    k = t - start
                    s0 = k * sst[0] + s * sst[1] + b * sst[2]
                    w0 = k * volst[0] + s * volst[1] + b * volst[2]
                    c0 = k * curst[0] + s * curst[1] + b * curst[2]
                    if has_acc and t >= delay:
                        a0 = (t - delay - row0) * ast[0] + a_set * ast[1] + b * ast[2]
                        _fixed_row(acc, a0, v, v0, u, u0, spk, s0, volts, w0, currs, c0,
                                   shift, gain, us, vs, th, bias, b0, n, True, opts)  # fmt: skip
                    else:
                        _fixed_row(acc, 0, v, v0, u, u0, spk, s0, volts, w0, currs, c0,
                                   shift, gain, us, vs, th, bias, b0, n, False, opts)  # fmt: skip

    return _jit()(fixed_chunk)


@_jit(inline="always")
def _fixed_row(acc, a0, v, v0, u, u0, spk, s0, volts, w0, currs, c0, shift, gain, us, vs,
               th, bias, b0, n, fed, opts):  # fmt: skip
    """One row through one step (see _float_row)."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    has_memory, keep_u, v_decays, has_bias = opts & 1, opts & 2, opts & 4, opts & 8
    negative_exp, record_v, record_c = opts & 16, opts & 32, opts & 64
    a0, v0, u0, s0 = np.uint64(a0), np.uint64(v0), np.uint64(u0), np.uint64(s0)
    w0, c0, b0 = np.uint64(w0), np.uint64(c0), np.uint64(b0)
    for i in range(np.uint64(n)):
        a = zero
        if fed:
            a = acc[a0 + i]
            if negative_exp:  # Lava's arithmetic right shift floors
                a = np.float32(np.floor(a * shift))
            a = a * gain
        cur = u[u0 + i]
        if has_memory:
            cur = np.float32(np.trunc(np.float64(cur) * us))
            if fed:
                cur = cur + a
        elif not fed:
            cur = zero
        elif keep_u:
            cur = a
        if keep_u or not fed:
            u[u0 + i] = cur
        x = v[v0 + i]
        if v_decays:
            x = np.float32(np.trunc(np.float64(x) * vs))
        if keep_u:
            x = x + cur
        elif fed:
            x = x + a
        if has_bias:
            x = x + bias[b0 + i]
        sp = one if x > th else zero
        x = x - x * sp
        v[v0 + i] = x
        spk[s0 + i] = sp
        if record_v:
            volts[w0 + i] = x
        if record_c:
            currs[c0 + i] = cur
