"""A line-by-line numpy transcription of Lava 0.10's bit-accurate Dense + LIF models.

Used as a fast oracle for the torch simulator's ``loihi-fixed`` mode in environments without
Lava; the Lava parity tests remain the judge.  One sample at a time, no vectorisation, the
same numpy dtypes and operation order as ``PyDenseModelBitAcc`` and ``PyLifModelBitAcc``.
"""

from __future__ import annotations

import numpy as np

from simulators.fixed_point import FixedLayer


def run_sample(layers: list[FixedLayer], spikes_in: np.ndarray) -> tuple[list, list, list]:
    """spikes_in (T, N_in) -> per layer (T, N) spikes, voltages v, currents u."""
    steps = spikes_in.shape[0]
    a_buff = [np.zeros(layer.weight.shape[0], dtype=np.int32) for layer in layers]
    u = [np.zeros(layer.weight.shape[0], dtype=np.int32) for layer in layers]
    v = [np.zeros(layer.weight.shape[0], dtype=np.int32) for layer in layers]
    out_s = [np.zeros((steps, layer.weight.shape[0]), dtype=bool) for layer in layers]
    out_v = [np.zeros((steps, layer.weight.shape[0]), dtype=np.int64) for layer in layers]
    out_u = [np.zeros((steps, layer.weight.shape[0]), dtype=np.int64) for layer in layers]
    max_uv = 2**23
    for t in range(steps):
        s_in = spikes_in[t].astype(bool)
        for i, layer in enumerate(layers):
            # Dense: send last step's buffer, then accumulate this step's spikes.
            a_in = a_buff[i].copy()
            a_accum = layer.weight.astype(np.int32)[:, s_in].sum(axis=1)
            shifted = (
                np.left_shift(a_accum, layer.weight_exp)
                if layer.weight_exp > 0
                else np.right_shift(a_accum, -layer.weight_exp)
            )
            a_buff[i] = shifted.astype(np.int32)
            # LIF (PyLifModelBitAcc.subthr_dynamics + spiking + reset)
            decayed_curr = np.int64(u[i]) * (4096 - (layer.du + 1))
            decayed_curr = np.sign(decayed_curr) * np.right_shift(np.abs(decayed_curr), 12)
            decayed_curr = np.int32(decayed_curr)
            activation_in = np.left_shift(a_in.astype(np.int32), 6)
            decayed_curr += activation_in
            wrapped = np.where(decayed_curr > max_uv, decayed_curr - 2 * max_uv, decayed_curr)
            wrapped = np.where(wrapped <= -max_uv, decayed_curr + 2 * max_uv, wrapped)
            u[i][:] = wrapped
            decayed_volt = np.int64(v[i]) * (4096 - layer.dv)
            decayed_volt = np.sign(decayed_volt) * np.right_shift(np.abs(decayed_volt), 12)
            decayed_volt = np.int32(decayed_volt)
            bias = np.where(
                layer.bias_exp >= 0,
                np.left_shift(layer.bias_mant.astype(np.int32), layer.bias_exp),
                np.right_shift(layer.bias_mant.astype(np.int32), -layer.bias_exp),
            )
            updated = decayed_volt + u[i] + bias
            v[i][:] = np.clip(updated, -max_uv + 1, max_uv - 1)
            spk = v[i] > np.left_shift(layer.vth, 6)
            v[i][spk] = 0
            out_s[i][t] = spk
            out_v[i][t] = v[i]
            out_u[i][t] = u[i]
            s_in = spk
    return out_s, out_v, out_u
