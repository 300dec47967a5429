"""Device servers for tests: real ``python -m devices.server`` processes where a test must
kill one, and the same ``serve()`` loop in a thread of the test process where it need not
(no torch import per server: seconds saved per server on a busy 2-core box)."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

from devices.handler import DeviceServer
from devices.remote import RemoteBackend
from devices.server import create_backend, serve
from devices.spawn import ServerProcess, start_server_process
from polystep_neuro.core.errors import DeviceUnavailable

ROOT = Path(__file__).resolve().parents[1]


def spawn(backend: str = "torch-sim", **kw: Any) -> ServerProcess:
    """A server process (CPU torch), not exiting on a client's close."""
    extra = ["--device", "cpu", *kw.pop("extra_args", ())]
    kw.setdefault("exit_on_close", False)
    return start_server_process(
        backend, extra_args=extra, cwd=str(ROOT), startup_timeout_s=120, **kw
    )


class ThreadServer:
    """``devices.server.serve`` in a daemon thread; stopped by a ``close`` request."""

    def __init__(
        self,
        backend: str = "torch-sim",
        *,
        bind: str = "tcp://127.0.0.1:0",
        curve_keys: str | os.PathLike[str] | None = None,
        **server_options: Any,
    ) -> None:
        """``server_options``: DeviceServer's (limits, sessions, clock)."""
        self.curve_keys = curve_keys
        self._out = io.StringIO()
        self._error: BaseException | None = None
        self.server = server = DeviceServer(
            backend, lambda: create_backend(backend, "cpu"), **server_options
        )

        def run() -> None:
            try:
                serve(server, bind, curve_keys=curve_keys, out=self._out)
            except BaseException as exc:  # surfaced by the startup wait below
                self._error = exc

        self.thread = threading.Thread(target=run, name=f"server-{backend}", daemon=True)
        self.thread.start()
        self.endpoint = self._await_endpoint()

    def _await_endpoint(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self._out.getvalue()
            if "listening on " in text:
                return text.split("listening on ", 1)[1].split()[0]
            if not self.thread.is_alive():
                raise RuntimeError(f"thread server failed to start: {self._error!r}")
            time.sleep(0.01)
        raise RuntimeError("thread server did not start within 30 s")

    def stop(self) -> None:
        """The serve loop returns after answering a request once should_exit is set.  (That
        last reply is sometimes lost: the server closes its socket with linger 0.)"""
        if self.thread.is_alive():
            self.server.should_exit = True
            client = RemoteBackend(
                self.endpoint,
                connect=False,
                curve_keys=self.curve_keys,
                connect_timeout_s=0.5,
                close_timeout_s=0.05,
            )
            with contextlib.suppress(DeviceUnavailable):
                client.ping(tries=1)
            client.close()
            self.thread.join(10)

    def __enter__(self) -> ThreadServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
