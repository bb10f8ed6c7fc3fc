"""Datasets: in-memory arrays, bundled digits, and sources and sinks on any fsspec URI.

Public entry points (imported lazily, so ``sem_dist.data.arrays`` stays cheap to import):

- :func:`load_dataset` — a whole split of any source in memory (noise and manifest for protected data).
- :func:`iter_batches` — ``(ids, uint8 NCHW images, int64 labels)`` batches, streamed shard by shard.
- :func:`open_split` — a split's classes, manifest and a streamed, checked record reader.
- :func:`read_shard` / :func:`write_shard` / :class:`DatasetWriter` — one canonical shard at a time.
- :func:`convert`, :func:`save_dataset`, :func:`export_imagefolder` — the data commands as functions.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "load_dataset": "sources.registry", "iter_batches": "sources.registry", "open_split": "sources.registry",
    "open_source": "sources.registry", "parse_spec": "sources.registry",
    "read_shard": "canonical", "write_shard": "canonical", "read_manifest": "canonical",
    "iter_dataset": "canonical", "DatasetWriter": "canonical", "Manifest": "canonical", "ShardInfo": "canonical",
    "convert": "convert", "save_dataset": "convert", "export_imagefolder": "export",
    "BadRecordPolicy": "records", "Chunk": "records", "DataError": "storage", "StorageOptions": "storage",
    "open_location": "storage", "redact_uri": "storage", "ArrayDataset": "arrays",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
