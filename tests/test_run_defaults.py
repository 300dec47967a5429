"""What a run adapts and how strongly it is anchored, given the data it has."""

from __future__ import annotations

import pytest

from polystep_neuro.core.network import NetworkSpec
from polystep_neuro.run.interop import device_writable
from polystep_neuro.run.run_defaults import (
    DRIFTED_ONLY_ANCHOR,
    hidden_biases,
    run_defaults,
    writable_names,
)


def _spec(sizes: list[int], writable: tuple[str, ...] | None = None) -> NetworkSpec:
    spec = NetworkSpec.random(sizes, 4, seed=0)
    return spec.with_writable(device_writable(spec) if writable is None else writable)


def test_drifted_data_only_narrows_to_the_hidden_biases_and_anchors() -> None:
    chosen = run_defaults(_spec([6, 5, 4, 3]), has_clean=False)
    assert chosen.writable == ("lif0.v_bias", "lif1.v_bias")
    assert chosen.anchor == DRIFTED_ONLY_ANCHOR == 2.0
    assert chosen.note is not None and "lif0.v_bias, lif1.v_bias" in chosen.note


def test_clean_data_keeps_every_writable_parameter_and_no_anchor() -> None:
    spec = _spec([6, 5, 3])
    chosen = run_defaults(spec, has_clean=True)
    assert chosen == type(chosen)(spec.writable, 0.0, None)


@pytest.mark.parametrize("has_clean", [False, True])
def test_the_users_choices_win(has_clean: bool) -> None:
    chosen = run_defaults(
        _spec([6, 5, 3]), has_clean=has_clean, writable=["fc1.weight"], anchor=0.5
    )
    assert (chosen.writable, chosen.anchor, chosen.note) == (("fc1.weight",), 0.5, None)


def test_nothing_to_narrow_to_keeps_the_writable_set() -> None:
    # one layer has no hidden layer; a readout-only spec has no hidden bias writable
    for spec in (_spec([6, 3]), _spec([6, 5, 3], ("fc1.weight", "lif1.v_bias"))):
        chosen = run_defaults(spec, has_clean=False)
        assert chosen.writable == spec.writable and chosen.note is None
        assert chosen.anchor == DRIFTED_ONLY_ANCHOR
    assert hidden_biases(_spec([6, 5, 3]), ["lif1.v_bias", "lif0.v_bias"]) == ("lif0.v_bias",)


def test_writable_names_reads_all_and_a_single_string() -> None:
    spec = _spec([6, 5, 3])
    every = tuple(spec.param_shapes())
    assert writable_names(spec, "all") == writable_names(spec, ["all"]) == every
    assert writable_names(spec, "lif0.v_bias") == ("lif0.v_bias",)  # not its letters
    assert writable_names(spec, ["fc0.weight", "fc1.weight"]) == ("fc0.weight", "fc1.weight")
    assert writable_names(spec, None) is None and writable_names(spec, ()) is None
