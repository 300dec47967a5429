"""What a run may change, decided in one place with the device: every backend kind's
capabilities, "all", the defaults with and without clean data, and the refusals' text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from devices.catalog import ALL_PARAMETERS, RECORDS, lava_record
from devices.sharded import common_writable
from polystep_neuro.core.contract import Capabilities
from polystep_neuro.core.errors import SpecError
from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.interop import device_writable as interop_device_writable
from polystep_neuro.run.writable import (
    device_writable,
    hidden_biases,
    resolve_writable,
    scoring_writable,
)

WEIGHTS_AND_BIASES = ("fc0.weight", "lif0.v_bias", "fc1.weight", "lif1.v_bias")
EVERY = (
    "fc0.weight", "fc0.bias", "lif0.du", "lif0.dv", "lif0.vth", "lif0.v_bias",
    "fc1.weight", "fc1.bias", "lif1.du", "lif1.dv", "lif1.vth", "lif1.v_bias",
)  # fmt: skip


def _caps(name: str) -> Capabilities:
    """The capabilities a backend of catalog record ``name`` reports (as BaseBackend does)."""
    record = RECORDS[name]
    return Capabilities(name, record.precision or "float32", writable=record.writable)


# Each backend kind: (capabilities, what "all" is for a 6-5-3 network with Dense biases).
KINDS = {
    "torch-sim": (_caps("torch-sim"), EVERY),
    # fixed point folds a Dense bias into the neuron bias: du stays 1 where there is one
    "torch-sim-fixed": (
        _caps("torch-sim-fixed"),
        tuple(n for n in EVERY if not n.endswith(".du")),
    ),
    "lava": (
        _caps("lava"),
        tuple(n for n in EVERY if n.split(".")[1] in ("weight", "bias", "vth", "v_bias")),
    ),
    "lava-fixed": (
        _caps("lava-fixed"),
        tuple(n for n in EVERY if n.split(".")[1] in ("weight", "bias", "v_bias")),
    ),
    "loihi2": (
        _caps("loihi2"),
        tuple(n for n in EVERY if n.split(".")[1] in ("weight", "bias", "v_bias")),
    ),
    # a device server reached over tcp:// reports what the backend it hosts can rewrite
    "remote lava-fixed": (
        Capabilities(
            "lava-fixed", "loihi-fixed", 8, lava_record("fixed_pt").writable, True, "", "tcp://h:1"
        ),
        tuple(n for n in EVERY if n.split(".")[1] in ("weight", "bias", "v_bias")),
    ),
    # shards (tcp://A,tcp://B) and Ray actors report what every one of them can rewrite
    "sharded / ray": (
        Capabilities(
            "sharded",
            "loihi-fixed",
            writable=common_writable([_caps("torch-sim-fixed"), _caps("lava-fixed")]),
        ),
        tuple(n for n in EVERY if n.split(".")[1] in ("weight", "bias", "v_bias")),
    ),
    # an older server that does not say: its own load judges what it is given
    "remote, unreported": (Capabilities("remote", "float32", is_remote=True), EVERY),
}


def _net(bias: bool = True, writable: tuple[str, ...] = ()) -> NetworkSpec:
    return NetworkSpec.random([6, 5, 3], 4, seed=0, bias=bias, writable=writable)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_all_is_every_parameter_the_device_can_rewrite(kind: str) -> None:
    capabilities, expected = KINDS[kind]
    chosen = resolve_writable(_net(), "all", capabilities, has_clean=False)
    assert chosen.loaded == chosen.adapted == expected  # named: no drifted-only narrowing
    assert chosen.note is None
    assert resolve_writable(_net(), ["all"], capabilities).loaded == expected


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_network_marking_nothing_gets_the_weights_and_neuron_biases(kind: str) -> None:
    capabilities, _ = KINDS[kind]
    chosen = resolve_writable(_net(), None, capabilities, has_clean=True)
    assert chosen.loaded == chosen.adapted == WEIGHTS_AND_BIASES == device_writable(_net())
    assert interop_device_writable is device_writable  # one definition


def test_drifted_data_only_narrows_to_the_hidden_biases() -> None:
    caps = _caps("torch-sim-fixed")
    spec = NetworkSpec.random([6, 5, 4, 3], 4, seed=0)
    chosen = resolve_writable(spec, None, caps, has_clean=False)
    assert chosen.loaded == device_writable(spec)  # the device keeps the whole set
    assert chosen.adapted == ("lif0.v_bias", "lif1.v_bias")
    assert chosen.note == (
        "drifted data only: adapting the hidden neurons' biases (lif0.v_bias, lif1.v_bias), "
        "which track a drift without forgetting clean inputs (clean replay data lets a run "
        "adapt every writable parameter; naming the writable set overrides this)"
    )
    # named sets, and networks with no hidden bias among their writable set, are not narrowed
    named = resolve_writable(spec, "lif2.v_bias", caps, has_clean=False)
    assert named.adapted == ("lif2.v_bias",) and named.note is None  # one name, not letters
    for net in (NetworkSpec.random([6, 3], 4, seed=0), _net(writable=("fc1.weight",))):
        kept = resolve_writable(net, None, caps, has_clean=False)
        assert kept.adapted == kept.loaded and kept.note is None
    assert hidden_biases(_net(), ["lif1.v_bias", "lif0.v_bias"]) == ("lif0.v_bias",)


def test_a_parameter_the_device_cannot_rewrite_is_refused_with_the_cause_and_the_fix() -> None:
    with pytest.raises(SpecError) as asked:
        resolve_writable(_net(), ["fc1.weight", "lif0.vth"], _caps("lava-fixed"))
    assert str(asked.value) == (
        "the run asks to adapt lif0.vth, but lava-fixed cannot rewrite lif<i>.vth at run time "
        "(it rewrites fc<i>.weight, fc<i>.bias, lif<i>.v_bias); leave it out of the writable "
        "set (--writable / writable=), or name 'all' for every parameter lava-fixed can rewrite"
    )
    with pytest.raises(SpecError) as marked:
        resolve_writable(_net(writable=("lif0.du",)), None, _caps("torch-sim-fixed"))
    assert str(marked.value) == (
        "the network marks lif0.du writable, but torch-sim-fixed cannot rewrite lif0.du of "
        "this network: layer 0 has a Dense bias (fc0.bias), which Loihi 2 fixed point folds "
        "into the neuron bias, exact only while du stays 1; leave it out of the writable set "
        "(--writable / writable=), or name 'all' for every parameter torch-sim-fixed can "
        "rewrite"
    )
    # without a Dense bias, or in float32, du is rewritable
    assert resolve_writable(_net(bias=False), "lif0.du", _caps("torch-sim-fixed")).loaded == (
        "lif0.du",
    )
    assert resolve_writable(_net(), "lif0.du", _caps("torch-sim")).loaded == ("lif0.du",)
    with pytest.raises(SpecError, match="writable: unknown parameter name 'fc9.weight'"):
        resolve_writable(_net(), ["fc9.weight"], _caps("torch-sim"))


def test_a_device_that_can_rewrite_nothing_of_the_network_says_so() -> None:
    caps = replace(_caps("torch-sim"), name="odd", writable=("lif<i>.dv",))
    with pytest.raises(SpecError) as nothing:
        resolve_writable(_net(), None, caps)
    assert str(nothing.value) == (
        "nothing to adapt: odd can rewrite none of this network's parameters (it rewrites "
        "lif<i>.dv)"
    )


def test_without_a_device_all_is_every_parameter() -> None:
    """`convert` opens no device: its "all" is the network's every parameter, and `adapt`
    checks the set against the device it runs on."""
    assert resolve_writable(_net(), "all", None).loaded == EVERY
    assert resolve_writable(_net(), None, None).loaded == WEIGHTS_AND_BIASES
    assert ALL_PARAMETERS == RECORDS["torch-sim"].writable


def test_scoring_leaves_out_what_the_device_cannot_rewrite_instead_of_refusing() -> None:
    """A label-free run hands back a network that marks thresholds writable; evaluating it
    on Lava rewrites nothing, so the thresholds are dropped from the loaded set, not refused
    (a run that adapts leaves them out with a note, below; naming them is refused, above)."""
    net = _net(writable=("fc1.weight", "lif0.vth", "lif0.v_bias"))
    scored = scoring_writable(net, _caps("lava-fixed"))
    assert scored.loaded == ("fc1.weight", "lif0.v_bias") and scored.adapted == ()
    with pytest.raises(SpecError, match="lava-fixed cannot rewrite lif<i>.vth"):
        resolve_writable(net, "lif0.vth", _caps("lava-fixed"))
    thresholds_only = scoring_writable(_net(writable=("lif0.vth",)), _caps("lava-fixed"))
    assert thresholds_only.loaded == ()


def test_marked_names_this_device_cannot_rewrite_are_left_out_with_a_note() -> None:
    """A label-free run on torch-sim-fixed hands back a network that marks its thresholds
    writable; adapting it on lava-fixed refused the whole file (a user's event-camera run)."""
    marked = _net(writable=("fc1.weight", "lif0.v_bias", "lif0.vth"))
    chosen = resolve_writable(marked, None, _caps("lava-fixed"))
    assert chosen.loaded == chosen.adapted == ("fc1.weight", "lif0.v_bias")
    assert chosen.note == (
        "note: the network marks lif0.vth writable, but lava-fixed cannot rewrite lif<i>.vth "
        "at run time (it rewrites fc<i>.weight, fc<i>.bias, lif<i>.v_bias): left out"
    )
    drifted = resolve_writable(marked, None, _caps("lava-fixed"), has_clean=False)
    assert drifted.adapted == ("lif0.v_bias",)
    assert drifted.note.startswith("note: the network marks lif0.vth writable, but ")
    assert "\ndrifted data only: adapting the hidden neurons' biases" in drifted.note
    assert resolve_writable(marked, None, _caps("torch-sim-fixed")).note is None
