"""docs/cli.md is the parser's own text: a flag added, renamed or re-explained in the code
and not in the reference fails here (a docs audit found a dozen flags that only `--help`
described)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reference_tool():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "tools/cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_command_reference_is_the_parsers_text() -> None:
    written = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    assert written == _reference_tool().render(), (
        "docs/cli.md is older than the parser: run python tools/cli_reference.py"
    )


def test_the_reference_holds_every_flag_of_every_command() -> None:
    text = (ROOT / "docs/cli.md").read_text(encoding="utf-8")
    flags = ("--max-bad-batches", "--pretrain-steps", "--no-progress", "--samples", "--drifted",
             "--z-limit", "--trust-radius", "--with-lava-dl", "--only")  # fmt: skip
    for flag in flags:
        assert f"`{flag}`" in text, flag
    assert "`--device`" not in text.split("## `polystep-neuro bench`")[0]  # hidden old names
