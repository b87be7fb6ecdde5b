"""Reads CIFAR's python pickles without letting a pickle run code.

torchvision's CIFAR classes check the md5 of every batch and unpickle with the
stock unpickler; we read the same on-disk layout ourselves so that any file in
that layout loads, and only the handful of classes those pickles need may be
referenced.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from kdcore.data.types import DatasetError

CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels_key": "labels",
        "names_key": "label_names",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels_key": "fine_labels",
        "names_key": "fine_label_names",
    },
}

# (module, name) pairs a CIFAR pickle may reference. _codecs.encode appears in
# pickles written by Python 3 with protocol 2 (bytes); _frombuffer in numpy
# arrays written with protocol 5. None of them can run arbitrary code.
_ALLOWED = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("__builtin__", "dict"),
    ("__builtin__", "list"),
    ("__builtin__", "bytes"),
    ("__builtin__", "str"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


def _resolve(module: str, name: str):
    # numpy 2 renamed numpy.core to numpy._core; go to the real module to skip the shim's warning
    if module == "__builtin__":
        module = "builtins"
    if module.startswith("numpy.core."):
        try:
            return getattr(importlib.import_module("numpy._core." + module[len("numpy.core."):]), name)
        except (ImportError, AttributeError):
            pass
    return getattr(importlib.import_module(module), name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not allowed in a CIFAR file")
        return _resolve(module, name)


def safe_load_pickle(path: Path) -> dict:
    """Unpickles a CIFAR batch file, allowing only dicts, lists, strings and numpy arrays.

    Args:
        path: a CIFAR python batch or meta file.

    Returns:
        The unpickled dict.

    Raises:
        DatasetError: the file is unreadable, refers to any other class, or is not a dict.
    """
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path} is not a plain CIFAR pickle and was not loaded: {err}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} does not hold a dict as CIFAR files do")
    return obj


def _get(d: dict, key: str):
    # Python 2 pickles load with str keys (latin1); files written by Python 3 may use bytes keys
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def cifar_files(name: str) -> list[str]:
    """Names of the files expected in the dataset's folder."""
    lay = CIFAR_LAYOUT[name]
    return [*lay["train"], *lay["test"], lay["meta"]]


def _read_batches(folder: Path, files: list[str], labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        d = safe_load_pickle(path)
        try:
            data = np.asarray(_get(d, "data"), dtype=np.uint8)
            labels = np.asarray(_get(d, labels_key), dtype=np.int64)
        except KeyError as err:
            raise DatasetError(f"{path} has no {err.args[0]!r} entry") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DatasetError(
                f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} and {len(labels)}"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar(name: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Reads a CIFAR folder in its python on-disk layout.

    Args:
        name: "cifar10" or "cifar100".
        root: the data root holding cifar-10-batches-py/ or cifar-100-python/.

    Returns:
        train_x (N,3,32,32) uint8, train_y (N,) int64, test_x, test_y, class names.
    """
    lay = CIFAR_LAYOUT[name]
    folder = root / lay["folder"]
    train_x, train_y = _read_batches(folder, lay["train"], lay["labels_key"])
    test_x, test_y = _read_batches(folder, lay["test"], lay["labels_key"])
    meta_path = folder / lay["meta"]
    try:
        names = [_text(n) for n in _get(safe_load_pickle(meta_path), lay["names_key"])]
    except KeyError:
        raise DatasetError(f"{meta_path} has no {lay['names_key']!r} entry") from None
    return train_x, train_y, test_x, test_y, names
