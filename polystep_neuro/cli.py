"""The ``polystep-neuro`` command's entry point: the roof above the run floor and the bench.

``polystep-neuro bench ...`` hands every argument after ``bench`` to the benchmarks (their
own ``--help``, ``--only``, ``--device cuda`` included); every other command is the run
floor's (:mod:`polystep_neuro.run.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["bench"]:
            from polystep_neuro.bench.__main__ import main as bench_main

            return bench_main(args[1:])
        from polystep_neuro.run.cli import main as run_main

        return run_main(args)
    except KeyboardInterrupt:  # before a run's own Ctrl-C handling (torch's import: ~2 s)
        print("polystep-neuro: stopped (Ctrl-C)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
