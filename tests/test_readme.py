"""The README stays true: its demo block has the format the demo prints (it is written by
tools/readme_demo.py from real runs), its Python snippet runs as written, and it links
nothing outside the repository."""

from __future__ import annotations

import json
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


def _default_model(snn, hidden: int, seed: int = 0) -> torch.nn.Sequential:
    """A reader's model with snnTorch's defaults (subtract reset, reset_delay, biases)."""
    import functools

    torch.manual_seed(seed)
    grad = functools.partial(snn.surrogate.ATan.apply, alpha=2.0)  # pickles (torch.save)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True),
        torch.nn.Linear(hidden, 10),
        snn.Leaky(beta=0.9, spike_grad=grad, init_hidden=True, output=True),
    )
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[2].weight.mul_(3.0)
    return model


def _time_first(rng: np.random.Generator, t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Spike trains (T, n, 64) as snnTorch's spikegen makes them, and labels."""
    return (rng.random((t, n, 64)) < 0.3).astype(np.uint8), rng.integers(0, 10, n)


def test_the_python_snippet_runs_as_written(tmp_path, monkeypatch) -> None:
    snn = pytest.importorskip("snntorch")
    snippet = re.search(r"```python\n(import polystep_neuro as pn\n.*?)```", README, re.S)
    assert snippet is not None
    # What the snippet assumes the reader has: a trained snnTorch model and spike data.
    t, rng = 6, np.random.default_rng(0)
    model = _default_model(snn, 8)
    names = ("clean", "test", "drift", "shifted")
    scope = {"model": model, "T": t}
    for name, n in zip(names, (80, 40, 120, 40), strict=True):
        scope[f"x_{name}"], scope[f"y_{name}"] = _time_first(rng, t, n)
    before = model[0].bias.detach().clone()
    monkeypatch.chdir(tmp_path)
    above = README[: snippet.start(1)].count("\n")  # warnings then name the README's lines
    exec(compile("\n" * above + snippet.group(1), "README.md", "exec"), scope)
    deployed, result = scope["deployed"], scope["result"]
    assert set(deployed.reference) == {"val_accuracy", "clean_accuracy"}
    assert deployed.after["val_accuracy"] >= deployed.before["val_accuracy"]
    assert deployed.parameter_sets <= 50_000 and [
        layer.delay for layer in deployed.spec.layers
    ] == [1, 1]
    assert set(result.result.end) >= {"clean_accuracy", "shifted_accuracy"}
    # load_into wrote the network that was handed back into the reader's module.
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), result.spec.layers[0].weight)
    # drifted data only: the hidden biases were adapted (polystep_neuro.run.run_defaults)
    assert result.result.adapted == ("lif0.v_bias",)
    assert result.result.steps == 300 and (result.result.kept_start or not
                                             torch.equal(model[0].bias, before))  # fmt: skip


def test_the_commands_run_as_written(tmp_path, monkeypatch, capsys) -> None:
    """The command-line block of "Your own network", line by line, on a model with
    snnTorch's defaults and the files it names."""
    import shlex

    from polystep_neuro.cli import main

    snn = pytest.importorskip("snntorch")
    section = README.split("## Your own network", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert [c.split()[1] for c in commands] == [
        "convert", "check", "deploy", "evaluate", "adapt", "export"
    ]  # fmt: skip
    t = int(re.search(r"--time-steps (\d+)", block).group(1))
    monkeypatch.chdir(tmp_path)
    torch.save(_default_model(snn, 12), "model.pt")
    rng = np.random.default_rng(1)
    for name, n in (("clean", 160), ("test", 60), ("drifted", 160), ("shifted", 60)):
        spikes, labels = _time_first(rng, t, n)
        np.savez(f"{name}.npz", spikes=spikes, labels=labels)
    for command in commands:
        words = shlex.split(command.split("#", 1)[0])
        assert words[0] == "polystep-neuro"
        code = main(words[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}: {err}"
    summary = json.loads((tmp_path / "runs/mine/summary.json").read_text())
    assert summary["recovered"]["val_accuracy"] >= summary["converted"]["val_accuracy"]
    assert summary["parameter_sets"] <= 50_000
    assert (tmp_path / "runs/drift/summary.json").is_file() and (tmp_path / "adapted.nir").is_file()
