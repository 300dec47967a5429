"""HostBridge: the one custom process of a Lava graph built by ``simulators.lava_net``.

It stands between the host and the network (real Lava Dense and LIF processes):

- one *load step* per run: it receives the run's command and inputs from the host (external
  pipes: one message each, not one per step) and, in the management phase, writes the new
  per-replica weights / biases into the Dense and LIF Vars through RefPorts;
- every later step it sends one input vector and adds the output spikes to the counts;
- at every sample boundary it zeroes each Dense ``a_buff`` and LIF ``u``/``v`` through
  RefPorts, so every sample starts from rest;
- after the last step it returns all counts in one message.

Host-side ``Var.set`` costs ~60 us per element in Lava 0.10; RefPort writes move a whole
array in one message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from simulators.lava_plan import lava_vector, lava_weights

CMD_SIZE = 4  # [n_windows, write mask, reuse inputs, unused]


class HostBridge(AbstractProcess):
    """Inputs in, counts out, parameter writes and state resets through RefPorts.

    state_vars: Vars zeroed at every sample boundary.
    slots: (Var, compact shape (R, ...), kind, replicas, parallel, copies) rewritten on
    request; ``kind`` is a layout kind for weight matrices or "vector" for neuron values.
    """

    def __init__(
        self,
        *,
        n_in: int,
        n_out: int,
        steps_per_window: int,
        max_windows: int,
        state_vars: list[Any],
        slots: list[tuple[Any, tuple[int, ...], str, int, int, int]],
        fixed: bool,
    ) -> None:
        super().__init__(
            n_in=n_in,
            n_out=n_out,
            steps_per_window=steps_per_window,
            max_windows=max_windows,
            n_state=len(state_vars),
            slots=[tuple(s[1:]) for s in slots],
            fixed=fixed,
        )
        self.s_out = OutPort(shape=(n_in,))
        self.a_in = InPort(shape=(n_out,))
        self.cmd_pipe = InPort(shape=(CMD_SIZE,))
        self.cmd_pipe.flag_external_pipe(buffer_size=1)
        self.x_pipe = InPort(shape=(max_windows * steps_per_window * n_in,))
        self.x_pipe.flag_external_pipe(buffer_size=1)
        self.c_pipe = OutPort(shape=(max_windows * n_out,))
        self.c_pipe.flag_external_pipe(buffer_size=1)
        for i, var in enumerate(state_vars):
            port = RefPort(var.shape)
            setattr(self, f"rs_{i}", port)
            port.connect_var(var)
        for j, (var, compact_shape, *_rest) in enumerate(slots):
            port = RefPort(var.shape)
            setattr(self, f"rw_{j}", port)
            port.connect_var(var)
            pipe = InPort(shape=(int(np.prod(compact_shape)),))
            pipe.flag_external_pipe(buffer_size=1)
            setattr(self, f"p_{j}", pipe)

    # ------------------------------------------------------------------ host side
    def start_run(self, n_windows: int, mask: int, x: np.ndarray | None) -> None:
        """Queue one run: its command, inputs (None = reuse the last run's) and nothing
        else; parameter arrays follow through send_slot."""
        cmd = np.array([n_windows, mask, x is None, 0], dtype=np.float64)
        self.cmd_pipe.external_pipe_csp_send_port.send(cmd)
        if x is not None:
            port = self.x_pipe.external_pipe_csp_send_port
            buf = np.zeros(self.x_pipe.shape, dtype=np.int8)
            buf[: x.size] = x.reshape(-1)
            port.send(buf)

    def send_slot(self, j: int, compact: np.ndarray) -> None:
        pipe = getattr(self, f"p_{j}")
        dtype = np.int32 if self.proc_params["fixed"] else np.float64
        pipe.external_pipe_csp_send_port.send(np.ascontiguousarray(compact, dtype).reshape(-1))

    def receive_counts(self, n_windows: int) -> np.ndarray:
        counts = self.c_pipe.external_pipe_csp_recv_port.recv()
        n_out = self.proc_params["n_out"]
        return counts[: n_windows * n_out].reshape(n_windows, n_out)


@implements(proc=HostBridge, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "floating_pt")
class PyHostBridgeModel(PyLoihiProcessModel):
    """Port types depend on the network: ``bridge_model`` makes the concrete subclass."""

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        p = proc_params
        self.fixed = bool(p["fixed"])
        self.dtype = np.int32 if self.fixed else np.float64
        self.n_in = int(p["n_in"])
        self.n_out = int(p["n_out"])
        self.T = int(p["steps_per_window"])
        self.max_windows = int(p["max_windows"])
        self.slot_info = list(p["slots"])
        self.n_state = int(p["n_state"])
        self.k = 0  # step within the current run; 0 = the load step
        self.total = 0
        self.mask = 0
        self.x = np.zeros((0, self.n_in), dtype=self.dtype)
        self.counts = np.zeros((0, self.n_out), dtype=np.int64)
        self.zeros_in = np.zeros(self.n_in, dtype=self.dtype)

    def run_spk(self) -> None:
        if self.k == 0:
            cmd = self.cmd_pipe.recv()
            n_windows, self.mask, reuse = int(cmd[0]), int(cmd[1]), bool(cmd[2])
            if not reuse:
                steps = self.max_windows * self.T
                self.x = self.x_pipe.recv().reshape(steps, self.n_in).astype(self.dtype)
            self.counts = np.zeros((n_windows, self.n_out), dtype=np.int64)
            self.total = 1 + n_windows * self.T
            self.s_out.send(self.zeros_in)
            self.a_in.recv()
        else:
            t = self.k - 1
            self.s_out.send(self.x[t])
            self.counts[t // self.T] += self.a_in.recv().astype(np.int64)
            if self.k == self.total - 1:
                out = np.zeros(self.max_windows * self.n_out, dtype=np.int32)
                out[: self.counts.size] = self.counts.reshape(-1)
                self.c_pipe.send(out)
        self.k = (self.k + 1) % self.total

    def post_guard(self) -> bool:
        # k has advanced: 1 = after the load step; (k-1) % T == 0 = after a sample's last
        # step (k == 0 after the run's last step: the next load step resets anyway).
        return self.k == 1 or (self.k > 1 and (self.k - 1) % self.T == 0)

    def run_post_mgmt(self) -> None:
        written = []
        if self.k == 1:
            for j, (shape, kind, replicas, parallel, copies) in enumerate(self.slot_info):
                if not self.mask >> j & 1:
                    continue
                compact = getattr(self, f"p_{j}").recv().reshape(shape)
                if kind == "vector":
                    value = lava_vector(compact, copies, parallel)
                else:
                    value = lava_weights(compact, kind, replicas, parallel)
                port = getattr(self, f"rw_{j}")
                port.write(value.astype(self.dtype, copy=False))
                written.append(port)
        for i in range(self.n_state):
            port = getattr(self, f"rs_{i}")
            port.write(np.zeros(port._shape, dtype=self.dtype))
            written.append(port)
        # A write lands before the target's next step only once acknowledged; a read on the
        # same port is that acknowledgement.
        for port in written:
            port.wait()


def bridge_model(bridge: HostBridge) -> type:
    """The model class for one bridge, with a LavaPyType for each of its ports."""
    dtype = np.int32 if bridge.proc_params["fixed"] else np.float64
    attrs: dict[str, Any] = {
        "s_out": LavaPyType(PyOutPort.VEC_DENSE, dtype),
        "a_in": LavaPyType(PyInPort.VEC_DENSE, dtype),
        "cmd_pipe": LavaPyType(PyInPort.VEC_DENSE, np.float64),
        "x_pipe": LavaPyType(PyInPort.VEC_DENSE, np.int8),
        "c_pipe": LavaPyType(PyOutPort.VEC_DENSE, np.int32),
    }
    for i in range(bridge.proc_params["n_state"]):
        attrs[f"rs_{i}"] = LavaPyType(PyRefPort.VEC_DENSE, dtype)
    for j in range(len(bridge.proc_params["slots"])):
        attrs[f"rw_{j}"] = LavaPyType(PyRefPort.VEC_DENSE, dtype)
        attrs[f"p_{j}"] = LavaPyType(PyInPort.VEC_DENSE, dtype)
    return type("PyHostBridgeModelNet", (PyHostBridgeModel,), attrs)
