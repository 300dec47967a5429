"""Write docs/cli.md, every command's flags with their defaults and help, from the parser.

    python tools/cli_reference.py

The reference is the parser's own text, so it cannot drift from what ``--help`` says;
tests/test_cli_reference.py fails when docs/cli.md is older than the parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"

HEADER = """# Command reference

Every `polystep-neuro` command and its flags, as `polystep-neuro COMMAND --help` gives them
(this page is written from the same parser by `python tools/cli_reference.py`). What the
commands are for, with examples: the [README](../README.md); every error message and what
to do: [troubleshooting.md](troubleshooting.md).
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and one-line help (what the command list says), by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{action.dest.upper()}`"
    if action.nargs == 0:
        return names
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    if action.nargs in ("+", "*"):
        metavar = f"{metavar} ..."
    return f"{names} {_cell(str(metavar))}"


def _command(name: str, parser: argparse.ArgumentParser, summary: str = "") -> list[str]:
    lines = [f"## `polystep-neuro {name}`", ""]
    if parser.description or summary:
        lines += [_cell(parser.description or summary), ""]
    rows = [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
        and not isinstance(a, argparse._SubParsersAction)
    ]  # fmt: skip
    if rows:
        lines += ["| flag | what it does |", "|---|---|"]
        for action in rows:
            required = " (required)" if action.required and action.option_strings else ""
            lines.append(f"| {_flag(action)}{required} | {_cell(action.help or '')} |")
        lines.append("")
    for sub_name, (sub, summary) in _subcommands(parser).items():
        lines += _command(f"{name} {sub_name}", sub, summary)
    return lines


def render() -> str:
    """docs/cli.md's text, from the command's parser."""
    sys.path.insert(0, str(ROOT))
    from polystep_neuro.bench.__main__ import bench_parser
    from polystep_neuro.run.cli import _parser

    lines = [HEADER]
    for name, (parser, summary) in _subcommands(_parser()).items():
        if name == "bench":  # forwarded to the benchmarks' own parser before this one runs
            parser = bench_parser()
        lines += _command(name, parser, summary)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
