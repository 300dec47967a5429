"""The two arithmetics of the torch LIF simulator, each chosen once when a network is loaded.

Like Lava's ProcessModels tagged ``floating_pt`` and ``fixed_pt`` (one Process, one model
per arithmetic, picked when the network is compiled), :class:`TorchLIF
<simulators.torch_lif.TorchLIF>` holds one :class:`Precision` and asks it, never its name,
how to prepare the network, check the inputs, quantise a block's weights, build a layer's
neurons and step them:

- :class:`Float32`: snnTorch's float CUBA LIF (``nn.Linear`` + ``snn.Leaky`` /
  ``snn.Synaptic`` with delay 0; Lava's ``floating_pt`` with delay 1).
- :class:`LoihiFixed`: Loihi 2's integer arithmetic exactly as Lava's bit-accurate models
  compute it (docs/fixed-point.md).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import torch

from polystep_neuro.core.batch import CheckedBatch, first_non_spike
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators import fixed_point as fp
from simulators.lif_dynamics import (
    Buffer,
    FixedLIF,
    FixedNeurons,
    FloatLIF,
    FloatNeurons,
    fixed_neurons,
    float_neurons,
)

# Integer-valued float32 GEMMs are exact while every partial sum stays below 2**24.
_F32_EXACT = 1 << 24

Neurons = FloatNeurons | FixedNeurons
Runner = FloatLIF | FixedLIF


class Workspace(Protocol):
    """Reusable buffers by tag (simulators.torch_lif keeps them)."""

    def get(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...


class Precision:
    """One arithmetic of the simulator (see the module docstring)."""

    name: ClassVar[str]
    # Products are integers whose sums are exact in any order (so a GEMM may be reordered).
    exact: ClassVar[bool]
    # What recorded voltages and currents are held in.
    state_dtype: ClassVar[torch.dtype]
    # Weight units per int8 step where the weights are small integers an int8 x int8 ->
    # int32 GEMM sums exactly (see int8_weights); None: the GEMM stays in floating point.
    int8_unit: ClassVar[float | None] = None

    def prepare(self, spec: NetworkSpec) -> NetworkSpec:
        """The network as this arithmetic runs it (validated)."""
        return spec.validate()

    def check_inputs(self, x: torch.Tensor, batch: CheckedBatch) -> None:
        """SpecError for inputs (``x``: ``batch.inputs`` on the device, float32) this
        arithmetic cannot take."""
        if not bool(torch.isfinite(x).all()):
            raise SpecError("inputs contain non-finite values")

    def gemm_dtype(self, layer: LayerSpec) -> torch.dtype:
        return torch.float32

    def neurons(self, params: dict[str, torch.Tensor], layer: LayerSpec) -> Neurons:
        raise NotImplementedError

    def weights(
        self, w: torch.Tensor, layer: LayerSpec, dtype: torch.dtype, work: Workspace, tag: str
    ) -> torch.Tensor:
        """A block's weights as the GEMM takes them."""
        return w

    def int8_weights(
        self, w: torch.Tensor, layer: LayerSpec, work: Workspace, tag: str
    ) -> torch.Tensor:
        """A block's weights as int8 multiples of ``int8_unit`` (only where that is set)."""
        raise NotImplementedError

    def runner(
        self,
        layer: LayerSpec,
        neurons: Any,
        template: torch.Tensor,
        buffer: Buffer,
        gemm_dtype: torch.dtype,
    ) -> Runner:
        raise NotImplementedError

    def matmul(self) -> contextlib.AbstractContextManager[None]:
        """The context every GEMM of a run happens in."""
        return contextlib.nullcontext()


class Float32(Precision):
    name = "float32"
    exact = False
    state_dtype = torch.float32

    def neurons(self, params: dict[str, torch.Tensor], layer: LayerSpec) -> Neurons:
        return float_neurons(params)

    def runner(
        self,
        layer: LayerSpec,
        neurons: Any,
        template: torch.Tensor,
        buffer: Buffer,
        gemm_dtype: torch.dtype,
    ) -> Runner:
        return FloatLIF(layer, neurons, template, buffer)


class LoihiFixed(Precision):
    name = "loihi-fixed"
    exact = True
    state_dtype = torch.int64  # the device integers
    int8_unit = 2.0  # device weights are even integers in [-254, 254]: halves fit int8

    def prepare(self, spec: NetworkSpec) -> NetworkSpec:
        spec.validate()
        fp.check_fixed_compatible(spec)
        return fp.calibrate(spec)

    def check_inputs(self, x: torch.Tensor, batch: CheckedBatch) -> None:
        """Spikes only (the batch's own 0/1 scan, kept for whoever asks next)."""
        if not batch.binary:
            odd = first_non_spike(x)
            example = "" if odd is None else f", e.g. {odd:g}"
            raise SpecError(
                f"loihi-fixed inputs must be binary spikes (0 or 1), these are not{example}: "
                "rate-code values into spikes first (e.g. snntorch.spikegen.rate), or run a "
                "float backend (torch-sim), which takes them as input currents"
            )

    def gemm_dtype(self, layer: LayerSpec) -> torch.dtype:
        if layer.n_in * max(abs(fp.WEIGHT_MIN), fp.WEIGHT_MAX) >= _F32_EXACT:
            return torch.float64
        return torch.float32

    def neurons(self, params: dict[str, torch.Tensor], layer: LayerSpec) -> Neurons:
        return fixed_neurons(params, layer)

    def weights(
        self, w: torch.Tensor, layer: LayerSpec, dtype: torch.dtype, work: Workspace, tag: str
    ) -> torch.Tensor:
        return quantized_weight(w, layer, dtype, work, tag)

    def int8_weights(
        self, w: torch.Tensor, layer: LayerSpec, work: Workspace, tag: str
    ) -> torch.Tensor:
        return quantized_halves(w, layer, work, tag)

    def runner(
        self,
        layer: LayerSpec,
        neurons: Any,
        template: torch.Tensor,
        buffer: Buffer,
        gemm_dtype: torch.dtype,
    ) -> Runner:
        return FixedLIF(layer, neurons, template, buffer, gemm_dtype)

    def matmul(self) -> contextlib.AbstractContextManager[None]:
        return _exact_fp32_matmul()


PRECISIONS: dict[str, Precision] = {p.name: p for p in (Float32(), LoihiFixed())}


def precision_named(name: str) -> Precision:
    """The arithmetic called ``name`` (SpecError naming the choices otherwise)."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise SpecError(f"precision must be one of {tuple(PRECISIONS)}, got {name!r}") from None


def quantized_weight(
    w: torch.Tensor, layer: LayerSpec, dtype: torch.dtype, work: Workspace, tag: str
) -> torch.Tensor:
    """``fp.quantize_weight(w, layer)`` in ``dtype``: the same float64 operations in the
    same order, done in place in reused buffers (fresh float64 copies of every set's
    weights cost more in page faults than the arithmetic)."""
    half = work.get(f"{tag}.q64", tuple(w.shape), torch.float64).copy_(w)
    half.mul_(fp.weight_factor(layer) / 2.0).round_()
    half.clamp_(fp.WEIGHT_MIN // 2, fp.WEIGHT_MAX // 2)
    if dtype == torch.float64:
        return half.mul_(2.0)
    return torch.mul(half, 2.0, out=work.get(f"{tag}.q", tuple(w.shape), dtype))


def quantized_halves(w: torch.Tensor, layer: LayerSpec, work: Workspace, tag: str) -> torch.Tensor:
    """Half of ``fp.quantize_weight(w, layer)`` as int8: the integers ``quantized_weight``
    doubles, from the same float64 operations, for an int8 GEMM."""
    half = work.get(f"{tag}.q64", tuple(w.shape), torch.float64).copy_(w)
    half.mul_(fp.weight_factor(layer) / 2.0).round_()
    half.clamp_(fp.WEIGHT_MIN // 2, fp.WEIGHT_MAX // 2)
    return work.get(f"{tag}.q8", tuple(w.shape), torch.int8).copy_(half)


@functools.cache
def int8_gemm_exact(device_type: str = "cpu") -> bool:
    """Whether ``torch._int_mm`` runs on this device and sums exactly into int32 what the
    fixed-point path feeds it: 0/1 spikes times weight halves in [-127, 127], probed once
    per process on the worst rows and columns (all ones against all +-127, sums past
    int16).  Not the full int8 range: kernels without int8 dot products (AVX2 without
    VNNI) may saturate pairwise int16 sums there while staying exact on these operands.
    CPU only: CUDA's int8 GEMM has shape rules this path does not keep."""
    if device_type != "cpu" or not hasattr(torch, "_int_mm"):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        k = 2 * fp.WEIGHT_MAX * 4  # long enough that the extreme sums pass int16
        spikes = torch.randint(0, 2, (37, k), generator=gen, dtype=torch.int8)
        spikes[0], spikes[1] = 1, 0
        half = fp.WEIGHT_MAX // 2
        w = torch.randint(-half, half + 1, (k, 11), generator=gen, dtype=torch.int8)
        w[:, 0], w[:, 1] = half, -half
        got = torch._int_mm(spikes, w).to(torch.int64)
        return bool(torch.equal(got, spikes.to(torch.int64) @ w.to(torch.int64)))
    except (RuntimeError, NotImplementedError):
        return False


@contextlib.contextmanager
def _exact_fp32_matmul() -> Iterator[None]:
    """TF32 would round integer GEMMs on CUDA; switch it off for the fixed-point path."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
