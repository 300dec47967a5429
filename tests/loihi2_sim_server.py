"""A device server hosting the ``loihi2`` backend on Loihi2SimCfg (Lava's CPU models) in
place of Loihi2HwCfg: the loihi2 code path (chip limits, Dense column gather, V split into
runs that fit) without a chip.  Run in the Lava venv, as ``devices.server`` is::

    python -m tests.loihi2_sim_server --backend loihi2 --bind tcp://127.0.0.1:0 --exit-on-close

(tests/test_backend_contract.py spawns it through ``devices.lava.spawn_server``).
"""

from __future__ import annotations

import argparse
import sys

from devices.handler import DeviceServer
from devices.lava_local import LavaLocalBackend
from devices.server import serve
from devices.sessions import SessionLimits
from simulators.lava_net import sim_run_cfg


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.loihi2_sim_server")
    parser.add_argument("--backend", choices=["loihi2"], default="loihi2")
    parser.add_argument("--bind", default="tcp://127.0.0.1:0")
    parser.add_argument("--exit-on-close", action="store_true")
    args = parser.parse_args()
    server = DeviceServer(
        "loihi2",
        lambda: LavaLocalBackend("loihi2", run_cfg=sim_run_cfg),
        sessions=SessionLimits(max_sessions=1),  # the chip holds one graph, as devices.server
        exit_on_close=args.exit_on_close,
    )
    return serve(server, args.bind)


if __name__ == "__main__":
    sys.exit(main())
