"""The import paths of release 0.1 that moved into the floors, kept for one release.

``from polystep_neuro.network import NetworkSpec`` still works and warns once with the new
path.  One finder on ``sys.meta_path`` answers for every moved module, so no file of the old
layout is kept.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

_RUN = ("adapt_job", "api", "controller", "convert", "data", "demo", "evaluation", "losses")
_RUN += ("optimizers", "params", "plots", "run_defaults", "interop", "interop.snntorch")
_RUN += ("interop.nir", "interop.netx")
MOVED: dict[str, str] = {
    **{f"polystep_neuro.{m}": f"polystep_neuro.core.{m}" for m in ("errors", "network", "batch")},
    **{f"polystep_neuro.{m}": f"polystep_neuro.run.{m}" for m in _RUN},
    "polystep_neuro.device_select": "simulators.torch_device",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # a placeholder; exec_module puts the real module in its place

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # before the path finder: see MOVED
