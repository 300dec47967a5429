"""Runs IN the Lava venv with lava-dl (``polystep-neuro devices setup-lava --with-lava-dl``):
``python -m tests.netx_env_checks NET.h5 INPUTS.npy`` from the project root
(tests/test_interop_netx.py does).  Prints one JSON line: the output spike counts (B, N_out)
of lava-dl's netx ``hdf5.Network`` loaded from NET.h5 and run on Lava's CPU simulator
(``Loihi2SimCfg(select_tag="fixed_pt")``), one fresh network per sample.

The input is a RingBuffer source sending sample step t at Lava step t + 1, and the output
spikes are counted over the same T steps, as the lava-fixed backend counts them.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from lava.lib.dl import netx
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source


def run_sample(path: str, sample: np.ndarray) -> tuple[np.ndarray, str]:
    steps = sample.shape[0]
    net = netx.hdf5.Network(net_config=path)
    source = Source(data=sample.T.astype(np.int8))  # (n_in, T)
    sink = Sink(shape=net.out.shape, buffer=steps)
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        spikes = sink.data.get()  # (n_out, T)
    finally:
        net.stop()
    return spikes.sum(axis=1).astype(np.int64), str(net)


def main() -> None:
    path, inputs = sys.argv[1], np.load(sys.argv[2])
    start = time.perf_counter()
    counts = []
    table = ""
    for sample in inputs:
        c, table = run_sample(path, sample)
        counts.append(c.tolist())
    result = {"counts": counts, "table": table, "seconds": time.perf_counter() - start}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
