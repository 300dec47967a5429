"""The 0.1 import paths still work for one release, warn once, and give the moved module."""

from __future__ import annotations

import importlib
import sys

import pytest

from polystep_neuro._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_moved_module_with_a_warning(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_from_import_of_an_old_path_gives_the_same_class() -> None:
    from polystep_neuro.core.network import NetworkSpec

    sys.modules.pop("polystep_neuro.network", None)
    with pytest.warns(DeprecationWarning):
        from polystep_neuro.network import NetworkSpec as Old
    assert Old is NetworkSpec


def test_an_unknown_old_path_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("polystep_neuro.no_such_module")
