"""float32 mode with delay 0 is snnTorch itself (nn.Linear + snn.Leaky / snn.Synaptic)."""

from __future__ import annotations

import pytest
import torch

from polystep_neuro.core.network import LayerSpec, NetworkSpec
from simulators.torch_lif import TorchLIF

snn = pytest.importorskip("snntorch")

SIZES = [12, 16, 5]
T = 20
B = 6


def _run_snntorch(kind: str, reset: str, reset_delay: bool, seed: int):
    torch.manual_seed(seed)
    fcs = [torch.nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)]
    for fc in fcs:
        fc.weight.data *= 2.5
    if kind == "leaky":
        lifs = [
            snn.Leaky(beta=0.8, threshold=0.7, reset_mechanism=reset, reset_delay=reset_delay)
            for _ in fcs
        ]
    else:
        lifs = [
            snn.Synaptic(
                alpha=0.6, beta=0.8, threshold=0.7, reset_mechanism=reset, reset_delay=reset_delay
            )
            for _ in fcs
        ]
    x = (torch.rand(T, B, SIZES[0], generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    states = [lif.init_leaky() if kind == "leaky" else lif.init_synaptic() for lif in lifs]
    spikes = [[] for _ in fcs]
    mems = [[] for _ in fcs]
    with torch.no_grad():
        for t in range(T):
            h = x[t]
            for i, (fc, lif) in enumerate(zip(fcs, lifs, strict=True)):
                if kind == "leaky":
                    h, mem = lif(fc(h), states[i])
                    states[i] = mem
                else:
                    syn, mem = states[i]
                    h, syn, mem = lif(fc(h), syn, mem)
                    states[i] = (syn, mem)
                spikes[i].append(h.clone())
                mems[i].append(mem.clone())
    layers = [
        LayerSpec(
            weight=fc.weight.detach().numpy(),
            bias=fc.bias.detach().numpy(),
            du=1.0 if kind == "leaky" else 1.0 - 0.6,
            dv=1.0 - 0.8,
            vth=0.7,
            reset=reset,
            reset_delay=reset_delay,
            delay=0,
            neuron=kind if kind == "leaky" else "synaptic",
        )
        for fc in fcs
    ]
    spec = NetworkSpec(layers, num_steps=T)
    ref_spk = [torch.stack(s, dim=1) for s in spikes]  # (B, T, N)
    ref_mem = [torch.stack(m, dim=1) for m in mems]
    return spec, x.permute(1, 0, 2).numpy(), ref_spk, ref_mem


@pytest.mark.parametrize("kind", ["leaky", "synaptic"])
@pytest.mark.parametrize(
    ("reset", "reset_delay"),
    [("zero", False), ("subtract", True), ("zero", True), ("subtract", False), ("none", True)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_snntorch(kind: str, reset: str, reset_delay: bool, seed: int) -> None:
    spec, x, ref_spk, ref_mem = _run_snntorch(kind, reset, reset_delay, seed)
    res = TorchLIF(spec).evaluate(None, x, record=True)
    assert res.spikes is not None and res.voltages is not None
    total_spikes = 0
    for i in range(len(spec.layers)):
        ours_spk = res.spikes[i][0].float()
        assert torch.equal(ours_spk, ref_spk[i]), f"layer {i} spikes differ"
        assert torch.allclose(res.voltages[i][0], ref_mem[i], atol=1e-6, rtol=0), f"layer {i}"
        total_spikes += int(ref_spk[i].sum())
    assert total_spikes > 20  # the comparison saw real activity
    expected_counts = ref_spk[-1].sum(dim=1).to(torch.int32)
    assert torch.equal(res.counts[0], expected_counts)
