"""polystep-neuro: adapt spiking networks on the device with forward passes only.

``polystep_neuro.adapt(model, backend, train=..., ...)`` is the one-call API (see
:mod:`polystep_neuro.run.api`); ``polystep_neuro.deploy(model, backend, data=...)`` puts a
trained model on a device and recovers what the conversion cost
(:mod:`polystep_neuro.run.deploy`); ``polystep_neuro.check(model, backend, x, y)`` compares
them layer by layer (:mod:`polystep_neuro.run.parity`); ``polystep_neuro.evaluate(model, data,
backend)`` scores one (:mod:`polystep_neuro.run.evaluate_api`).  The parts they are built from live
in the submodules.
"""

from importlib.metadata import PackageNotFoundError, version

from polystep_neuro import _moved

_moved.install()  # the 0.1 import paths (polystep_neuro.network, ...) for one release

try:
    __version__ = version("polystep-neuro")
except PackageNotFoundError:  # run from a checkout without an install
    __version__ = "0.0.0+unknown"

__all__ = [
    "Adaptation",
    "Deployment",
    "NetworkSpec",
    "ParityReport",
    "Settings",
    "__version__",
    "adapt",
    "check",
    "deploy",
    "evaluate",
    "Evaluation",
    "watch",
]


def __dir__() -> list[str]:
    """The API's names (loaded on first use) beside the module's own."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str):
    # torch is imported only when the API is used (the Lava env imports this package).
    if name in ("adapt", "Adaptation"):
        from polystep_neuro.run import api

        return getattr(api, name)
    if name in ("deploy", "Deployment"):
        from polystep_neuro.run import deploy

        return getattr(deploy, name)
    if name in ("check", "ParityReport"):
        from polystep_neuro.run import parity

        return parity.run_check if name == "check" else parity.ParityReport
    if name in ("evaluate", "Evaluation"):
        from polystep_neuro.run import evaluate_api

        return getattr(evaluate_api, name)
    if name == "watch":
        from polystep_neuro.run.watch_api import watch

        return watch
    if name == "Settings":
        from polystep_neuro.run.optimizers import Settings

        return Settings
    if name == "NetworkSpec":
        from polystep_neuro.core.network import NetworkSpec

        return NetworkSpec
    raise AttributeError(f"module 'polystep_neuro' has no attribute {name!r}")
