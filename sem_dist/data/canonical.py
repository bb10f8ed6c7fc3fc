"""The canonical dataset format: ``part-NNNNN.parquet`` shards plus ``manifest.json``.

Columns: ``id`` (string, unique), ``image`` (struct{bytes: binary, path: string}: the Hugging Face
``datasets`` Image layout; we always write PNG), ``label`` (int64) and, for protected data written with
``--keep-noise``, ``noise`` (binary: int8 C·H·W bytes, CHW order; protected = clip(clean + noise, 0, 255)).

The manifest is the commit record: readers only trust shards it lists, each checked against its sha256.
Writers put shards at their final keys and write the manifest last (:class:`DatasetWriter`); a folder
without ``manifest.json`` is incomplete by definition, so a crash never leaves something that looks done.

Per-shard functions (:func:`write_shard`, :func:`read_shard`) are public: Ray Data workers regenerate
and write one shard each, and the driver commits the list of :class:`ShardInfo` they return.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .images import BadImage, ImageDecoder, encode_png
from .records import BadRecordPolicy, Chunk
from ..testing.stop import stop_point
from .storage import DataError, Location, is_temp_name

SCHEMA_VERSION = 1
FORMAT = "sem_dist.canonical"
MANIFEST = "manifest.json"
STAGING = "_staging"
SHARD_PREFIX = "part-"
READ_BATCH_ROWS = 1024  # Parquet row-group size and read batch: bounds decode memory within a shard

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}.parquet"


def is_shard_name(name: str) -> bool:
    return name.startswith(SHARD_PREFIX) and name.endswith(".parquet")


@dataclass
class ShardInfo:
    name: str
    rows: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    count: int
    channels: int
    height: int
    width: int
    classes: list[str]
    shards: list[ShardInfo]
    source: dict[str, Any] = field(default_factory=dict)  # redacted URI, split, options
    skipped: list[dict] = field(default_factory=list)  # records left out by --on-bad-record skip
    protection: dict[str, Any] | None = None  # method, config, seed, noise stats, timings, workers
    noise_column: bool = False
    image_format: str = "png"
    created: str = ""
    sem_dist_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> "Manifest":
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise DataError(f"{where}: not a sem_dist canonical manifest")
            if int(raw.get("schema_version", 0)) > SCHEMA_VERSION:
                raise DataError(f"{where}: schema version {raw['schema_version']} is newer than this sem_dist "
                                f"reads ({SCHEMA_VERSION}); upgrade sem_dist")
            raw["shards"] = [ShardInfo(**s) for s in raw["shards"]]
            return cls(**raw)
        except DataError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DataError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None


# ---- one shard ---------------------------------------------------------------------------------------

def encode_shard(ids: list[str], images: np.ndarray, labels: np.ndarray, noise: np.ndarray | None = None) -> bytes:
    """A Parquet shard (bytes) for uint8 NCHW ``images``, int64 ``labels`` and optional int8 ``noise``."""
    columns = {
        "id": pa.array(ids, pa.string()),
        "image": pa.array([{"bytes": encode_png(img), "path": None} for img in images], IMAGE_TYPE),
        "label": pa.array(np.asarray(labels, dtype=np.int64), pa.int64()),
    }
    if noise is not None:
        columns["noise"] = pa.array([n.astype(np.int8).tobytes() for n in noise], pa.binary())
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=READ_BATCH_ROWS)
    return buf.getvalue()


def write_shard(folder: Location, name: str, ids: list[str], images: np.ndarray, labels: np.ndarray,
                noise: np.ndarray | None = None) -> ShardInfo:
    """Encode and write one shard to ``folder/name`` (whole or not at all); returns what the manifest needs."""
    data = encode_shard(ids, images, labels, noise)
    folder.write_bytes(name, data)
    return ShardInfo(name, len(ids), hashlib.sha256(data).hexdigest(), len(data))


def read_shard(folder: Location, info: ShardInfo, manifest: Manifest, policy: BadRecordPolicy,
               batch_rows: int = READ_BATCH_ROWS) -> Iterator[Chunk]:
    """Decode one shard in chunks of at most ``batch_rows``; bad records go to ``policy``.
    The shard's bytes are checked against the manifest's sha256 before anything is decoded."""
    where = f"{folder.display}/{info.name}"
    data = folder.read_bytes(info.name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise DataError(f"{where}: sha256 {digest[:12]}… does not match the manifest's {info.sha256[:12]}… "
                        "(the shard is corrupt or was changed)")
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
    except pa.ArrowException as exc:
        raise DataError(f"{where}: not a readable Parquet file ({exc})") from None
    missing = {"id", "image", "label"} - set(pf.schema_arrow.names)
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(sorted(missing))}")
    want_noise = manifest.noise_column and "noise" in pf.schema_arrow.names
    decoder = ImageDecoder(manifest.channels, (manifest.height, manifest.width))
    shape = (manifest.channels, manifest.height, manifest.width)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["id", "image", "label"] +
                                 (["noise"] if want_noise else [])):
        rows = batch.to_pylist()
        ids, images, labels, noises = [], [], [], []
        for row in rows:
            rid = row["id"]
            if rid is None:
                raise DataError(f"{where}: a record has no id")
            reason, arr = _decode_row(row, decoder, shape, want_noise)
            if reason:
                policy.reject(rid, where, reason)
                continue
            ids.append(rid)
            images.append(arr)
            labels.append(row["label"])
            if want_noise:
                noises.append(np.frombuffer(row["noise"], dtype=np.int8).reshape(shape))
        if ids:
            yield Chunk(ids, np.stack(images), np.asarray(labels, dtype=np.int64), where,
                        np.stack(noises) if want_noise else None)


def _decode_row(row: dict, decoder: ImageDecoder, shape: tuple, want_noise: bool) -> tuple[str, np.ndarray | None]:
    """("", image) or (reason, None)."""
    if row["label"] is None:
        return "label missing", None
    image = row["image"]
    if image is None or image.get("bytes") is None:
        return "image bytes missing", None
    if want_noise and (row["noise"] is None or len(row["noise"]) != int(np.prod(shape))):
        return f"noise is not {int(np.prod(shape))} int8 values", None
    try:
        return "", decoder.decode(image["bytes"], row["id"])
    except BadImage as exc:
        return str(exc), None


# ---- a whole dataset ----------------------------------------------------------------------------------

def read_manifest(folder: Location) -> Manifest:
    """The manifest of the canonical dataset at ``folder``, or a DataError saying what is there instead."""
    names = folder.names()
    if MANIFEST in names:
        return Manifest.from_json(folder.read_bytes(MANIFEST), f"{folder.display}/{MANIFEST}")
    if not names and not folder.exists():
        raise DataError(f"{folder.display}: no such dataset ({folder.why_missing()})")
    splits = [n for n in names if folder.child(n).exists(MANIFEST)]
    if splits:
        raise DataError(f"{folder.display}: holds splits {', '.join(splits)}; name one "
                        f"(e.g. {folder.display}/{splits[0]})")
    if any(is_shard_name(n) for n in names) or STAGING in names:
        raise DataError(f"{folder.display}: has shards but no {MANIFEST}: an incomplete (interrupted) write "
                        f"(for Parquet that sem-dist did not write, read it as parquet:{folder.display})")
    if any(n.endswith(".parquet") for n in names):
        raise DataError(f"{folder.display}: Parquet files but no {MANIFEST}, so not a canonical dataset; "
                        f"read them as parquet:{folder.display}")
    raise DataError(f"{folder.display}: not a canonical dataset (no {MANIFEST}); other layouts are read as "
                    "parquet:URI, webdataset:URI or imagefolder:URI")


def iter_dataset(folder: Location, manifest: Manifest, policy: BadRecordPolicy,
                 batch_rows: int = READ_BATCH_ROWS) -> Iterator[Chunk]:
    """Every record, shard by shard: memory is bounded by one shard, not the dataset."""
    for info in manifest.shards:
        yield from read_shard(folder, info, manifest, policy, batch_rows)


class DatasetWriter:
    """Writes shards at their final keys (``part-*.parquet`` at the dataset's root) and commits them by
    writing the manifest last, in one atomic write (a local rename, or one S3 PUT).

    Until the manifest lands the folder has shards but no manifest, which every reader refuses as
    incomplete; after it, readers see exactly the shards it lists (each checked against its sha256). No
    shard is ever moved or copied, and no manifest is removed except by :meth:`clear` (``--overwrite``, a
    failed run). A kill at any moment leaves either no manifest (``--resume`` finishes the run from its
    ledger) or a complete dataset whose leftovers (``_staging``, shards it does not list) :meth:`tidy`
    removes. ``_staging`` holds the run's own state only: fingerprint, ledger, fitted method, checkpoints."""

    def __init__(self, out: Location):
        self.out = out
        self.staging = out.child(STAGING)

    def write_shard(self, index: int, chunk: Chunk, noise: np.ndarray | None = None) -> ShardInfo:
        return write_shard(self.out, shard_name(index), chunk.ids, chunk.images, chunk.labels, noise)

    def commit(self, manifest: Manifest) -> None:
        """Make the written shards a dataset: the manifest, then the leftovers go."""
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        stop_point("before-manifest")
        self.out.write_bytes(MANIFEST, manifest.to_json().encode())
        stop_point("after-manifest")
        self.tidy(manifest)

    def tidy(self, manifest: Manifest) -> None:
        """After ``manifest`` is in place: shards it does not list (an earlier run's), temp files of killed
        writes, and the run's state. Readers never look at any of them, so this may be cut short too."""
        keep = {s.name for s in manifest.shards}
        self.out.remove_many([n for n in self.out.names() if (is_shard_name(n) and n not in keep) or is_temp_name(n)])
        self.out.remove(STAGING)

    def clear(self) -> None:
        """Remove what sem-dist wrote here: the manifest first (an earlier dataset is withdrawn before any of
        its shards goes, so it is never read with missing or foreign shards), then shards and run state."""
        self.out.remove(MANIFEST)
        self.out.remove_many([n for n in self.out.names() if is_shard_name(n) or is_temp_name(n)])
        self.out.remove(STAGING)
