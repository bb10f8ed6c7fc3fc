"""CIFAR-10 / CIFAR-100 python batches, read with a restricted unpickler.

The official files are pickles: a plain ``pickle.load`` of a downloaded file runs whatever code it names.
:class:`RestrictedUnpickler` admits only what those files contain — dicts, lists, bytes/str, ints and
numpy arrays, i.e. the numpy globals an array pickle needs to rebuild itself, plus latin-1 bytes — and refuses
every other global before anything is called.
"""
from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import numpy as np

from ..records import BadRecordPolicy
from ..storage import DataError, Location
from .split import Source, Split, chunked

# (module, name) an ndarray pickle refers to; numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}

LAYOUT = {  # kind: (folder inside DIR, train files, test files, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


class RestrictedPickleError(DataError):
    pass


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 protocol-2 pickles rebuild bytes (including numpy array
    data) as ``encode(str, "latin1")``. Only that codec is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RestrictedPickleError(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in _ARRAY_GLOBALS:
            raise RestrictedPickleError(f"refused to load {module}.{name} (only dicts, lists, bytes, str and "
                                        "numpy arrays are allowed; nothing was executed)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.split(".", 2)[2]  # numpy 2 moved numpy.core to numpy._core
        return getattr(importlib.import_module(module), name)


def restricted_unpickle(data: bytes, where: str, what: str = "CIFAR batch") -> Any:
    """Unpickle ``data`` admitting only plain containers and numpy arrays (``what`` names the expected
    content in errors). Python 2 pickles (the official CIFAR files) load with ``encoding="bytes"`` so their
    str become bytes."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RestrictedPickleError as exc:
        raise RestrictedPickleError(f"{where}: {exc}") from None
    except Exception as exc:  # truncated or garbage bytes raise anything from EOFError to ValueError
        raise DataError(f"{where}: not a readable {what} ({type(exc).__name__}: {str(exc)[:80]})") from None


def restricted_load(data: bytes, where: str) -> Any:
    """A CIFAR batch dict via :func:`restricted_unpickle`; its bytes keys are decoded."""
    obj = restricted_unpickle(data, where)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class CifarSource(Source):
    def __init__(self, kind: str, location: Location, display: str, options: dict[str, str]):
        super().__init__(display, options)
        self.kind, self.location = kind, location
        sub, self.train_files, self.test_files, self.meta_file, self.label_key, self.names_key = LAYOUT[kind]
        self.folder = location.child(sub) if sub in location.names() else location
        if not any(f in self.folder.names() for f in self.train_files + self.test_files):
            raise DataError(f"{self.display}: no {kind} python batches ({self.train_files[0]}, "
                            f"{self.test_files[0]}) here or in {sub}/")

    def split_names(self) -> list[str]:
        return ["train", "test"]

    def classes(self) -> list[str]:
        n = 10 if self.kind == "cifar10" else 100
        if self.meta_file not in self.folder.names():
            return [str(i) for i in range(n)]
        where = f"{self.folder.display}/{self.meta_file}"
        names = restricted_load(self.folder.read_bytes(self.meta_file), where).get(self.names_key)
        if not isinstance(names, list) or len(names) != n:
            raise DataError(f"{where}: {self.names_key!r} is not a list of {n} class names")
        return [_text(c) for c in names]

    def split(self, name: str) -> Split:
        files = self.train_files if name == "train" else self.test_files
        present = self.folder.names()
        missing = [f for f in files if f not in present]
        if missing:
            raise DataError(f"{self.folder.display}: missing {', '.join(missing)}")

        def read(policy: BadRecordPolicy):
            offset = 0
            for f in files:
                where = f"{self.folder.display}/{f}"
                images, labels = self._batch(restricted_load(self.folder.read_bytes(f), where), where)
                ids = [f"{self.kind}-{name}-{offset + i:05d}" for i in range(len(labels))]
                offset += len(labels)
                yield from chunked(ids, images, labels, where)

        return Split(name, f"{self.display}?split={name}", self.classes(), read, location=self.folder)

    def _batch(self, d: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
        data, labels = d.get("data"), d.get(self.label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{where}: 'data' is not a uint8 (N, 3072) array")
        if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
            raise DataError(f"{where}: {self.label_key!r} is not a list of {len(data)} integer labels")
        return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)
