"""Image rows on Ray Data: ``read_rows(spec)`` → a ``ray.data.Dataset`` of ``id``, ``image`` (uint8 C×H×W),
``label`` (int64), ``error`` ("" or why the record is bad), plus :class:`DatasetInfo` from metadata.

Canonical datasets: ``read_parquet`` over the manifest's shards (a custom S3 endpoint through a pyarrow
``filesystem=``), PNG/JPEG decoding in ``map_batches`` tasks. Bad records are never dropped here: they
come out with ``error`` set (and a zero image) and the consumer applies ``--on-bad-record``. The
manifest's per-shard sha256 is not checked on this path (``read_parquet`` streams row groups and never
holds a whole shard); consumers that need it read whole shards, as regeneration does
(:mod:`sem_dist.engine.local`). Other source kinds are read by
``sem_dist.distributed.source_rows.read_source_rows``.
"""
from __future__ import annotations

import numpy as np

from ..data.images import BadImage, ImageDecoder
from ..data.info import DatasetInfo
from ..data.sources.registry import parse_spec
from ..data.storage import StorageOptions
from ..engine.input import open_input

__all__ = ["DatasetInfo", "read_rows", "decode_rows"]


def decode_rows(batch, channels: int, height: int, width: int, num_classes: int) -> dict[str, np.ndarray]:
    """A pyarrow batch of canonical columns → image rows (bad ones flagged in ``error``, never dropped)."""
    decoder = ImageDecoder(channels, (height, width))
    ids = batch.column("id").to_pylist()
    labels = batch.column("label").to_pylist()
    images = np.zeros((len(ids), channels, height, width), dtype=np.uint8)
    errors = []
    for i, (rid, image, label) in enumerate(zip(ids, batch.column("image").to_pylist(), labels)):
        reason = ""
        if label is None or not 0 <= label < num_classes:
            reason = f"label {label} is outside [0, {num_classes})"
        elif image is None or image.get("bytes") is None:
            reason = "image bytes missing"
        else:
            try:
                images[i] = decoder.decode(image["bytes"], rid)
            except BadImage as exc:
                reason = str(exc)
        errors.append(reason)
    return {"id": np.asarray(ids, dtype=object), "image": images,
            "label": np.asarray([-1 if v is None else v for v in labels], dtype=np.int64),
            "error": np.asarray(errors, dtype=object)}


def read_rows(spec: str, storage: StorageOptions, split: str | None = None):
    """``(ray.data.Dataset of image rows, DatasetInfo)`` for a source spec (``?split=`` or ``split``)."""
    import ray.data

    from .storage import storage_for

    parsed = parse_spec(spec)
    if parsed.kind != "canonical":
        from .source_rows import read_source_rows

        return read_source_rows(parsed, storage, split)
    if split:
        spec = f"{spec}{'&' if '?' in spec else '?'}split={split}"
    inp = open_input(spec, storage)
    info, folder = inp.info, inp.split.location
    if folder.is_local:
        root, filesystem = folder.path, None
    else:
        root, filesystem = storage_for(folder.display, storage)
    paths = [f"{root}/{s.name}" for s in info.manifest.shards]
    # one read task per shard: Ray's default count follows the cluster's CPUs, and the blocks decide which rows
    # each Ray Train rank gets, so a resume on another node layout would see other rows
    ds = ray.data.read_parquet(paths, filesystem=filesystem, columns=["id", "image", "label"],
                               override_num_blocks=len(paths))
    rows = ds.map_batches(decode_rows, batch_format="pyarrow",
                          fn_kwargs={"channels": info.channels, "height": info.height, "width": info.width,
                                     "num_classes": len(info.classes)})
    return rows, info
