"""What the Python API accepts as data, checked once for ``adapt``, ``deploy`` and ``check``.

Users hold their spikes in many containers: a ``(spikes, labels)`` pair of arrays or
tensors, the ``.npz`` the commands read (loaded, or its path), a dict of the same names, a
``TensorDataset`` or a ``DataLoader`` over one.  Each becomes ``(spikes, labels or None)``
here, and labels are checked against the network (whole numbers, finite, one per sample,
below the number of classes), so a bad label is one message naming the fix instead of an
index error deep in the loss, or a fractional label silently cut to an integer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polystep_neuro.core.errors import PolystepError
from polystep_neuro.core.network import network_file

ACCEPTED = (
    "a (spikes, labels) pair, spikes alone (unlabelled), a SpikeDataset, a dict or loaded "
    ".npz with 'spikes' (and 'labels'), the path of such an .npz, or a TensorDataset (a "
    "Subset of one) / "
    "DataLoader over (spikes, labels) tensors"
)


# A data path without a suffix is often a --test name given without its =FILE.
NO_SUFFIX_HINT = " (a data file is an .npz; --test takes NAME=FILE or FILE)"


def split(value: Any, *, need_labels: bool, what: str = "the data") -> tuple[Any, Any | None]:
    """``(spikes, labels)`` of ``value`` in any accepted form (labels None: unlabelled);
    one PolystepError naming the accepted forms otherwise, or when labels are needed and
    ``value`` has none."""
    spikes, labels = _parts(value, what)
    if labels is None and need_labels:
        raise PolystepError(
            f"{what} needs labels: give a (spikes, labels) pair or an .npz holding 'labels'"
        )
    return _plain(spikes, f"the spikes of {what}"), _plain(labels, f"the labels of {what}")


def _plain(x: Any, what: str) -> Any:
    """A tensor as data: detached from autograd (a tensor that requires grad raised torch's
    "Can't call numpy() on Tensor that requires grad" deep inside), refused on the meta
    device, which holds no values."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.is_meta:
        raise PolystepError(f"{what} are a tensor on the 'meta' device, which holds no values")
    return x.detach()


def _parts(value: Any, what: str) -> tuple[Any, Any | None]:
    from polystep_neuro.run.data import SpikeDataset

    if isinstance(value, SpikeDataset):
        return value.spikes.cpu().numpy(), (value.labels.cpu().numpy() if value.labelled
                                           else None)  # fmt: skip
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    if isinstance(value, (str, os.PathLike)):
        return read_file(Path(value), need_labels=False)
    if isinstance(value, (Mapping, np.lib.npyio.NpzFile)):
        return _named(value, what)
    if isinstance(value, torch.utils.data.DataLoader):
        return _loader(value, what)
    if isinstance(value, torch.utils.data.Dataset) and not hasattr(value, "shape"):
        return _dataset(value, what)
    if hasattr(value, "shape") and len(value.shape) == 3:
        return value, None
    shape = getattr(value, "shape", None)
    got = f"an array of shape {tuple(shape)}" if shape is not None else type(value).__name__
    raise PolystepError(f"{what} must be {ACCEPTED}; got {got}")


def _dataset(value: Any, what: str) -> tuple[Any, Any | None]:
    """A TensorDataset, or Subsets of one (``random_split``'s pieces): their samples only."""
    index: Any = slice(None)
    while isinstance(value, torch.utils.data.Subset):  # a Subset of a Subset of ...
        index = torch.as_tensor(value.indices, dtype=torch.long)[index]
        value = value.dataset
    tensors = getattr(value, "tensors", None)
    if not (isinstance(tensors, tuple) and len(tensors) in (1, 2)):
        raise PolystepError(
            f"{what}: a {type(value).__name__} cannot be read as a whole; collect its samples "
            "first, e.g. x = torch.stack([value[i][0] for i in range(len(value))]) (batch-first, "
            "(n, T, N_in), unless your samples are time-first) and the labels likewise, and "
            "pass (x, y)"
        )
    return tensors[0][index], (tensors[1][index] if len(tensors) == 2 else None)


def _loader(loader: torch.utils.data.DataLoader, what: str) -> tuple[Any, Any | None]:
    """A DataLoader whose sampler visits every sample of its dataset once (in order or
    shuffled: the set is the same); any other sampler picks samples the whole set is not."""
    sampler = loader.sampler
    if not isinstance(sampler, (torch.utils.data.SequentialSampler,
                                torch.utils.data.RandomSampler)) or (
        isinstance(sampler, torch.utils.data.RandomSampler)
        and (sampler.replacement or sampler.num_samples != len(loader.dataset))
    ):  # fmt: skip
        raise PolystepError(
            f"{what}: a DataLoader with a {type(sampler).__name__} picks some samples, not "
            "the whole dataset; pass the samples it should see, e.g. a Subset of the dataset, "
            "or (x, y)"
        )
    return _dataset(loader.dataset, what)


def _named(value: Any, what: str) -> tuple[Any, Any | None]:
    names = list(getattr(value, "files", None) or value.keys())
    if "spikes" not in names:
        raise PolystepError(f"{what} holds {names}, not 'spikes' (and 'labels')")
    return value["spikes"], (value["labels"] if "labels" in names else None)


def read_file(path: Path, need_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's data file, as the commands and the API read it: the arrays 'spikes' and
    'labels' (None where the file has none and ``need_labels`` is False) of an ``.npz``,
    no pickle; any file that is not one is one PolystepError saying what it is instead (a
    network, a torch.save file, an ``.npy``, a damaged archive, labels saved under another
    name)."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise PolystepError(
                f"{path} is a single .npy array; save an .npz with np.savez(path, "
                "spikes=..., labels=...)"
            )
        with data:
            if "spikes" not in data.files:
                _not_data(path, data.files)
                if data.files:  # arrays under other names ('x', 'y'): name them all at once
                    raise PolystepError(
                        f"{path} holds {sorted(data.files)}, not 'spikes' (and 'labels'): save "
                        "it as np.savez(path, spikes=<(n, T, N_in) spikes>, labels=<(n,) class "
                        "indices>)"
                    )
            if "labels" not in data.files:
                _no_misnamed_labels(path, data.files, need_labels)
                if need_labels and "spikes" in data.files:
                    raise PolystepError(
                        f"{path} holds no 'labels' (unlabelled data), and this command scores "
                        "accuracy: save the labels beside the spikes (np.savez(path, "
                        "spikes=..., labels=...))"
                    )
            spikes = data["spikes"]
            labels = data["labels"] if "labels" in data.files else None
    except FileNotFoundError:
        hint = "" if Path(path).suffix else NO_SUFFIX_HINT
        raise PolystepError(f"data file not found: {path}{hint}") from None
    except PolystepError:
        raise
    except Exception as exc:  # zip, zlib, npy header errors of a damaged file
        _not_data(path)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickled" in reason:  # numpy's last guess for any other file: never followed here
            reason = "it is not an .npz archive (nor any array file numpy reads)"
        raise PolystepError(
            f"{path} must be an .npz holding 'spikes' (n, T, N_in) and 'labels' (n,): {reason}"
        ) from None
    if spikes.dtype == bool:  # 0/1 spikes stored as booleans: the same spikes
        spikes = spikes.astype(np.uint8)
    for name, array in (("labels", labels), ("spikes", spikes)):
        if array is not None and not np.issubdtype(array.dtype, np.number):
            raise PolystepError(f"{path}: '{name}' must be a numeric array, got {array.dtype}")
    return spikes, labels


def _not_data(path: Path, files: list[str] | tuple[str, ...] = ()) -> None:
    """A network given where data belongs (a spec or a saved model as --data): say which
    flag takes it, instead of 'spikes is not a file in the archive'."""
    kind = network_file(path, files)
    if kind == "a model saved with torch.save":  # or tensors saved so: say both ways out
        raise PolystepError(
            f"{path} is a torch.save file: a model goes in as --snntorch (or --teacher), and "
            "data are read from an .npz holding 'spikes' (and 'labels'): np.savez(path, "
            "spikes=x.numpy(), labels=y.numpy())"
        )
    if kind is not None:
        raise PolystepError(
            f"{path} is {kind}, not data: give the network as --spec (or --snntorch / --nir / "
            "--teacher) and an .npz holding 'spikes' (and 'labels') as --data"
        )


_LABEL_LIKE = ("label", "labels", "y", "target", "targets", "class", "classes", "digit", "digits")


def _no_misnamed_labels(path: Path, names: list[str], need_labels: bool) -> None:
    """A file with no 'labels' but an array named like labels ('label', 'y', 'targets', ...)
    is a typo, not unlabelled data: one PolystepError naming it, never a silent label-free
    run."""
    found = [name for name in names if name.lower() in _LABEL_LIKE]
    if not found:
        return
    remedy = "name it 'labels' (np.savez(path, spikes=..., labels=...))"
    if not need_labels:
        remedy += " to use them, or leave it out for unlabelled data"
    raise PolystepError(f"{path} has no 'labels' but has '{found[0]}': {remedy}")


def labels_for(labels: Any, samples: int, classes: int, what: str = "the labels") -> np.ndarray:
    """``labels`` as class indices (int64, one per sample), or one PolystepError naming what
    is wrong: one-hot rows, the wrong count, NaN, fractions, or a class the network lacks."""
    out = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if out.ndim == 2 and out.shape == (samples, classes):
        raise PolystepError(
            f"{what} look one-hot ({samples}, {classes}): give class indices, labels.argmax(1)"
        )
    if out.shape != (samples,):
        raise PolystepError(f"{what} must be one class index per sample, ({samples},); "
                            f"got shape {out.shape}")  # fmt: skip
    if out.dtype == bool or not np.issubdtype(out.dtype, np.number):
        raise PolystepError(f"{what} must be integer class indices, got {out.dtype}")
    if not np.issubdtype(out.dtype, np.integer):
        if not np.isfinite(out).all():
            raise PolystepError(f"{what} contain NaN or infinite values")
        fractional = out[out != np.round(out)]
        if fractional.size:
            raise PolystepError(
                f"{what} must be whole class indices; {fractional.size} "
                f"{'is' if fractional.size == 1 else 'are'} not (e.g. {fractional[0]:g})"
            )
    out = out.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= classes):
        raise PolystepError(
            f"{what} must lie in [0, {classes}) for this network's {classes} classes; "
            f"got {out.min()} to {out.max()}"
        )
    return out


def same_source(a: Any, b: Any) -> bool:
    """Whether two data arguments are the same data: the same object, or paths to the same
    file (a copy under another name is not caught)."""
    if a is b:
        return True
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        try:
            return Path(a).resolve() == Path(b).resolve()
        except OSError:
            return False
    return False


def reused_notes(
    train: Any, tests: Mapping[str, Any], name: Callable[[str], str] = lambda n: f"test set {n!r}"
) -> list[str]:
    """One line per test set that is the training data itself: its accuracy is then not a
    held-out score (easy to do by accident with one data file)."""
    return [
        f"note: {name(k)} is the data the run adapts on: its accuracy is not a held-out score"
        for k, value in tests.items()
        if train is not None and same_source(value, train)
    ]
