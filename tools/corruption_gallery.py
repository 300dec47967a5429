"""Draw docs/corruptions.png: every corruption of polystep_neuro.run.corruptions at severities
1, 3 and 5, on one digits and one mnist5k test image (sensor faults shown as the spike count
per input over the window, which is what the network receives).

    python tools/corruption_gallery.py [--out docs/corruptions.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from polystep_neuro.run.corruptions import CORRUPTIONS, Corruption  # noqa: E402
from polystep_neuro.run.data import encode, load_split  # noqa: E402

SEVERITIES = (1, 3, 5)
NUM_STEPS = 16


def seen(x: np.ndarray, corruption: Corruption) -> np.ndarray:
    """What the network receives from one image: spike counts per input, as an image."""
    spikes = corruption.spikes(encode(corruption.images(x), NUM_STEPS))
    side = int(np.sqrt(x.shape[1]))
    return spikes.sum(axis=1).reshape(side, side) / NUM_STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/corruptions.png"))
    args = parser.parse_args()
    images = {name: load_split(name, 0).x_test[:1] for name in ("digits", "mnist5k")}
    rows, cols = len(CORRUPTIONS) + 1, 2 * len(SEVERITIES)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1))
    for c, (dataset, sev) in enumerate((d, s) for d in images for s in SEVERITIES):
        for r, name in enumerate(("clean", *CORRUPTIONS)):
            ax = axes[r, c]
            if name == "clean":
                side = int(np.sqrt(images[dataset].shape[1]))
                shown = encode(images[dataset], NUM_STEPS).sum(axis=1).reshape(side, side)
                shown = shown / NUM_STEPS
            else:
                shown = seen(images[dataset], Corruption(name, sev, 0))
            ax.imshow(shown, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                label = name.replace("_", " ")
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
            if r == 0:
                ax.set_title(f"{dataset}\nseverity {sev}", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.subplots_adjust(left=0.2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
