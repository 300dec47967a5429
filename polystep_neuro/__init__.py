"""polystep-neuro: adapt spiking networks on the device with forward passes only."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("polystep-neuro")
except PackageNotFoundError:  # run from a checkout without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
