"""How the benches train the snnTorch models they then deploy or adapt: one training loop,
so every bench's trained model comes from the same recipe."""

from __future__ import annotations

import numpy as np
import torch

BATCH = 128  # samples per BPTT minibatch


def train_bptt(
    net: torch.nn.Module,
    spikes: np.ndarray,
    labels: np.ndarray,
    *,
    lr: float,
    epochs: int,
    seed: int,
    time_first: bool,
) -> None:
    """BPTT with Adam on the count cross-entropy (counts x 0.5), ``epochs`` passes over
    minibatches of ``BATCH`` in an order ``seed`` draws; ``spikes`` are (T, n, F) when
    ``time_first``, else (n, T, F)."""
    from snntorch import utils

    xs = torch.as_tensor(spikes, dtype=torch.float32)
    if not time_first:
        xs = xs.transpose(0, 1)  # a view: the same samples, indexed [t, sample]
    ys = torch.as_tensor(labels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(ys), generator=gen)
        for first in range(0, len(ys), BATCH):
            idx = order[first : first + BATCH]
            utils.reset(net)
            counts = sum(net(xs[t, idx])[0] for t in range(xs.shape[0]))
            loss = torch.nn.functional.cross_entropy(counts * 0.5, ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
