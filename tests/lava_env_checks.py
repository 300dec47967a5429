"""Checks that need Lava in-process: run IN the Lava venv, ``python -m tests.lava_env_checks``
from the project root (tests/test_lava_backend.py does).  Prints one JSON line.

1. Per-step voltages, currents and spikes of a real Lava graph (``simulators.lava_net``:
   bridge, shared / stacked / block-diagonal layers, parallel samples, parameter upload,
   state resets) read by Lava Monitors, against tests/lava_reference.py (a numpy
   transcription of Lava's bit-accurate models; torch-sim-fixed is proven equal to it).
2. The ``loihi2`` backend code path with Loihi2SimCfg injected in place of Loihi2HwCfg (also
   Lava Dense's default column-gather path) gives the counts of ``lava-fixed``, also when
   small chip limits split V across runs (V = 3 as 2 + 1 replicas, against one unsplit
   lava-fixed run), and refuses a network one replica of which does not fit.
3. Without lava-loihi, ``loihi2`` says how to get Loihi 2.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from lava.proc.monitor.process import Monitor

from devices.lava_local import LavaLocalBackend
from polystep_neuro.core.errors import CapacityError, DeviceUnavailable
from polystep_neuro.core.network import NetworkSpec
from simulators import fixed_point as fp
from simulators import lava_plan
from simulators.lava_net import LavaNet, sim_run_cfg
from simulators.loihi2_capacity import ChipLimits
from tests.lava_reference import run_sample

T = 16


def _spec_and_params(seed: int) -> tuple[NetworkSpec, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = NetworkSpec.random(
        [12, 20, 16, 4],
        T,
        seed=seed,
        du=0.4,
        dv=0.15,
        weight_gain=3.5,
        writable=("fc1.weight", "lif2.v_bias"),
    )
    spec = spec.with_params({"lif0.v_bias": rng.normal(0.0, 0.2, 20).astype(np.float32)})
    spec = fp.calibrate(spec)
    num_sets = 3
    w = spec.layers[1].weight
    params = {
        "fc1.weight": (w * (1 + 0.4 * rng.standard_normal((num_sets, *w.shape)))).astype(
            np.float32
        ),
        "lif2.v_bias": rng.normal(0.0, 0.3, (num_sets, 4)).astype(np.float32),
    }
    x = (rng.random((3, T, 12)) < 0.35).astype(np.float32)
    return spec, params, x


def check_voltages(seed: int) -> dict[str, Any]:
    spec, params, x = _spec_and_params(seed)
    monitors: dict[tuple[int, str], Monitor] = {}

    def attach(processes: list[Any]) -> None:
        for i, lif in enumerate(processes[1::2]):
            for what in ("u", "v", "s_out"):
                mon = Monitor()
                mon.probe(getattr(lif, what), 2 * (1 + T))  # warm-up run + our run
                monitors[(i, what)] = mon

    # 4 samples side by side hold the 3 inputs in one window: no reset races the monitors
    net = LavaNet(spec, "fixed_pt", parallel=4, on_build=attach)
    try:
        counts = net.evaluate(params, x)
        data = {key: mon.get_data() for key, mon in monitors.items()}
    finally:
        net.close()
    compared = mismatched = spikes = 0
    num_sets, batch = counts.shape[:2]
    for r in range(num_sets):
        chosen = spec.with_params({name: value[r] for name, value in params.items()})
        layers = fp.quantize_spec(chosen)
        for s in range(batch):
            ref_s, ref_v, ref_u = run_sample(layers, x[s])
            for i, layer in enumerate(spec.layers):
                copies = 1 if i == 0 else num_sets
                for what, ref in (("u", ref_u[i]), ("v", ref_v[i]), ("s_out", ref_s[i])):
                    got = data[(i, what)][f"lif{i}"][what]
                    got = got[2 + T : 2 + 2 * T].reshape(T, 4, copies, layer.n_out)
                    got = got[:, s, min(r, copies - 1)]
                    compared += got.size
                    mismatched += int(np.count_nonzero(got != ref))
                spikes += int(ref_s[i].sum())
            if not np.array_equal(counts[r, s], ref_s[-1].sum(0)):
                mismatched += 1
    return {"entries": compared, "mismatches": mismatched, "reference_spikes": spikes}


def check_chunked_runs(seed: int) -> dict[str, Any]:
    """V split across graph-sized runs and B across input-budget-sized runs."""
    spec, params, x = _spec_and_params(seed)
    x = np.concatenate([x, x[::-1], x[:1]])  # 7 samples
    saved = lava_plan.INPUT_BUDGET
    lava_plan.INPUT_BUDGET = 2 * T * 12  # one window of 2 samples per run
    try:
        net = LavaNet(spec, "fixed_pt", max_vertices=2, replicas=2, parallel=2)
        try:
            counts = net.evaluate(params, x)
            again = net.evaluate(params, x)
            loaded = net.evaluate({}, x)
        finally:
            net.close()
    finally:
        lava_plan.INPUT_BUDGET = saved
    ref = np.zeros_like(counts)
    for r in range(counts.shape[0]):
        layers = fp.quantize_spec(spec.with_params({k: v[r] for k, v in params.items()}))
        ref[r] = [run_sample(layers, sample)[0][-1].sum(0) for sample in x]
    base = fp.quantize_spec(spec)
    ref_loaded = np.array([run_sample(base, sample)[0][-1].sum(0) for sample in x])
    exact = (
        np.array_equal(counts, ref)
        and np.array_equal(again, ref)
        and np.array_equal(loaded[0], ref_loaded)
    )
    return {"exact": bool(exact), "entries": int(ref.size + ref_loaded.size)}


def check_loihi2_path(seed: int) -> dict[str, Any]:
    spec, params, x = _spec_and_params(seed)
    # 5 cores of 16 neurons: the shared first layer (20 neurons) takes 2, each replica of
    # the 16- and 4-neuron layers 1 + 1/4: 2 replicas fit, so V = 3 runs as 2 + 1
    small = ChipLimits(cores_per_chip=5, max_neurons_per_core=16, synaptic_memory_bytes=1024)
    out, splits = {}, {}
    for key, mode, run_cfg, chip in (
        ("loihi2", "loihi2", sim_run_cfg, None),
        ("loihi2_split", "loihi2", sim_run_cfg, small),
        ("fixed_pt", "fixed_pt", None, None),
    ):
        backend = LavaLocalBackend(mode, run_cfg=run_cfg, chip=chip)
        try:
            backend.load(spec)
            out[key] = backend.evaluate(params, x)
            assert backend._net is not None
            splits[key] = list(backend._net.last_split)
        finally:
            backend.close()
    tiny = ChipLimits(cores_per_chip=3, max_neurons_per_core=16, synaptic_memory_bytes=1024)
    backend = LavaLocalBackend("loihi2", run_cfg=sim_run_cfg, chip=tiny)
    try:
        backend.load(spec)
        refused = ""
    except CapacityError as exc:
        refused = str(exc)
    finally:
        backend.close()
    try:
        LavaLocalBackend("loihi2")
        message = ""
    except DeviceUnavailable as exc:
        message = str(exc)
    return {
        "equal": bool(np.array_equal(out["loihi2"], out["fixed_pt"])),
        "split_equal": bool(np.array_equal(out["loihi2_split"], out["fixed_pt"])),
        "splits": splits,
        "entries": int(out["fixed_pt"].size),
        "spikes": int(out["fixed_pt"].sum()),
        "capacity_message": refused,
        "unavailable_message": message,
    }


def main() -> None:
    result = {
        "voltages": [check_voltages(seed) for seed in (0, 1)],
        "chunked": check_chunked_runs(3),
        "loihi2_path": check_loihi2_path(2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
