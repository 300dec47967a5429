"""Splitting the device's ties: every output neuron doubled, a class counted over both.

On the device a neuron resets to zero in the step it spikes, so the output layer fires less
and in coarser steps than the trained model's, and more samples end with two classes on the
same top count (a tie counts as wrong): on the deployment bench such ties are most of what
the calibration leaves of the gap.  A copy of each output neuron with the same weights and
its bias raised by a fraction of the threshold fires a little earlier and more often; summed
with the original, two classes rarely tie.  One more output neuron per class on the chip,
forward passes only; the sum is the host's readout (``devices.readout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec

# Bias offsets of the copies in units of the output layer's threshold: the original and one
# copy at +0.1 (chosen on seeds 0-2 of the deployment bench among three tries; docs/
# benchmarks.md, section 11).
OFFSETS = (0.0, 0.1)


def with_output_copies(spec: NetworkSpec, offsets: Sequence[float] = OFFSETS) -> NetworkSpec:
    """``spec`` whose output layer holds ``len(offsets)`` copies of every neuron (copy k of
    all neurons, then copy k + 1): the same weights, the bias plus ``offset * vth``, read
    as one count a class.  The layer's fixed-point calibration is dropped (the device picks
    one for the wider layer); a Dense bias is folded into the neuron bias (equal charge)."""
    if spec.output_copies != 1:
        raise SpecError(f"the network already holds {spec.output_copies} copies a class")
    last = spec.layers[-1]
    bias = last.v_bias if last.v_bias is not None else np.zeros(last.n_out, np.float32)
    if last.bias is not None:
        if np.float32(last.du) != 1:
            raise SpecError("a Dense bias with current memory cannot be folded into copies")
        bias = bias + last.bias
    copied = replace(
        last,
        weight=np.concatenate([last.weight] * len(offsets)).astype(np.float32),
        bias=None,
        v_bias=np.concatenate([bias + np.float32(o * last.vth) for o in offsets]).astype(
            np.float32
        ),
        fixed_scale=None,
        fixed_weight_exp=None,
        copies=len(offsets),
    )
    layers = [*spec.layers[:-1], copied]
    names = NetworkSpec(layers, spec.num_steps).param_shapes()  # a folded bias is gone
    writable = tuple(name for name in spec.writable if name in names)
    return NetworkSpec(layers, spec.num_steps, writable).validate()
