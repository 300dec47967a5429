"""The command-line options examples 02 and 03 share: the snnTorch model, its training and
the adaptation run.  Nothing heavy is imported here, so example 03 can read its options and
check the Lava env before it imports torch and snnTorch.  A helper module, not an example.
"""

from __future__ import annotations

import argparse


def digits_parser(description: str, writable_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--small", action="store_true", help="tiny sizes: runs in seconds (tests)")
    p.add_argument("--hidden", type=int, default=64, help="hidden LIF neurons")
    p.add_argument("--time-steps", type=int, default=16, help="T: time steps per sample")
    p.add_argument("--epochs", type=int, default=4, help="snnTorch BPTT epochs")
    p.add_argument("--writable", nargs="+", default=["fc1.bias"], help=writable_help)
    p.add_argument("--steps", type=int, default=80, help="PolyStep adaptation steps")
    p.add_argument("--rank", type=int, default=16, help="PolyStep subspace rank per tensor")
    p.add_argument("--batch-size", type=int, default=128, help="samples per adaptation step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse(parser: argparse.ArgumentParser, small_steps: int) -> argparse.Namespace:
    """The options, with ``--small`` shrinking the sizes (``small_steps`` adaptation steps)."""
    args = parser.parse_args()
    if args.small:
        args.hidden, args.epochs, args.steps, args.batch_size = 32, 2, small_steps, 64
    return args
