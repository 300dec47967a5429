"""The command line of the benches that measure one torch device (``[--device cuda]
[--quick]``), written once so that they take the same options the same way."""

from __future__ import annotations

import argparse


def device_bench_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """``--device`` (default cuda) and ``--quick`` parsed from ``argv``; the help's
    description is the first line of the bench's docstring ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    return parser.parse_args(argv)
