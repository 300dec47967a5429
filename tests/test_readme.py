"""The README stays true: its demo block has the format the demo prints (it is written by
tools/readme_demo.py from real runs), its Python snippet runs as written, and it links
nothing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"
STAGES = (
    "float32 pretrained",
    "Loihi 2 fixed point",
    "after input shift",
    "adapted (shifted)",
    "adapted (clean)",
)


def _demo_block() -> str:
    return README.split(START, 1)[1].split(END, 1)[0]


def test_demo_block_has_the_demos_format() -> None:
    block = _demo_block()
    assert re.search(r"^Seed 0 \(.+, \d+ cores, load average [\d.]+ at the start", block, re.M)
    output = block.split("```text", 1)[1].split("```", 1)[0]
    # The demo's own lines (polystep_neuro.run.demo.run_demo's report), in order.
    assert re.search(r"^digits: \d+ train \(\d+ of them held out", output, re.M)
    assert re.search(r"^\(a\) pretraining the readout with PolyStep \(1200 steps", output, re.M)
    assert re.search(r"^\(b\) Loihi 2 fixed point: test accuracy \d+\.\d%", output, re.M)
    assert re.search(r"^\(c\) input shift \(.+\): accuracy \d+\.\d%", output, re.M)
    assert re.search(r"^    handing back the network of step \d+ of 346", output, re.M)
    rows = re.findall(r"^\| (.+?) \| (\d+\.\d)% \|$", output, re.M)
    assert tuple(name for name, _ in rows) == STAGES
    assert re.search(
        r"^adaptation recovered -?\d+% of the accuracy the shift took; clean accuracy "
        r"[+-]\d+\.\d points; total \d+ s$",
        output,
        re.M,
    )
    seeds = re.findall(r"^\| (\d) \| (-?\d+)% \| ([+-]\d+\.\d) \| \d+ \| \d+ \|$", block, re.M)
    assert [s for s, _, _ in seeds] == ["0", "1", "2"]
    assert re.search(r"^\| median \| -?\d+% \| [+-]\d+\.\d \| \| \|$", block, re.M)


def test_no_link_leaves_the_repository() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert "shared/docs" not in text, path
        for target in re.findall(r"\]\(([^)#]+)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_the_python_snippet_runs_as_written(tmp_path, monkeypatch) -> None:
    snn = pytest.importorskip("snntorch")
    snippet = re.search(r"```python\n(import polystep_neuro as pn\n.*?)```", README, re.S)
    assert snippet is not None
    # What the snippet assumes the reader has: a trained snnTorch model and spike data.
    t, rng = 4, np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 8),
        snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero", reset_delay=False),
        torch.nn.Linear(8, 10),
        snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero", reset_delay=False,
                  output=True),
    )  # fmt: skip

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.random((n, t, 64)) < 0.3).astype(np.uint8), rng.integers(0, 10, n)

    (x_drift, y_drift), (x_clean, y_clean), (x_test, y_test) = data(160), data(40), data(40)
    before = model[0].bias.detach().clone()
    monkeypatch.chdir(tmp_path)
    scope = dict(model=model, T=t, x_drift=x_drift, y_drift=y_drift, x_clean=x_clean,
                 y_clean=y_clean, x_test=x_test, y_test=y_test)  # fmt: skip
    exec(compile(snippet.group(1), "README.md", "exec"), scope)
    result = scope["result"]
    assert set(result.result.end) >= {"clean_accuracy", "shifted_accuracy"}
    # load_into wrote the network that was handed back into the reader's module.
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), result.spec.layers[0].weight)
    # drifted data only: the hidden biases were adapted (polystep_neuro.run.run_defaults)
    assert result.result.adapted == ("lif0.v_bias",)
    assert result.result.steps == 300 and (result.result.kept_start or not
                                             torch.equal(model[0].bias, before))  # fmt: skip
