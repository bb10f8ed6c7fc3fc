"""Source specs → sources, and :func:`load_dataset` (a whole split in memory).

A spec is ``digits``, ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:DIR``, ``cifar100:DIR``,
``imagefolder:DIR[?classes=N&size=S&mode=RGB|L]``, ``parquet:URI[?image=COL&label=COL&id=COL&…]``
(Hugging Face-style Parquet without a manifest), ``webdataset:URI[?…]`` (tar shards), or a canonical dataset
URI (local path, ``file://``, ``s3://``, any fsspec URI). Every spec takes ``?split=NAME`` (``train``/``test``
for sources with splits, or a split folder of a canonical dataset written by ``convert``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator
from urllib.parse import parse_qsl

import numpy as np

from ..canonical import MANIFEST, READ_BATCH_ROWS, iter_dataset, read_manifest
from ..records import BadRecordPolicy, Chunk, concat, rebatch
from ..storage import DataError, StorageOptions, open_location, redact_uri, split_options
from .cifar import CifarSource
from .hfparquet import HFParquetSource
from .imagefolder import ImageFolderSource
from .mnist import MnistSource
from .split import Source, Split, chunked
from .webdataset import WebDatasetSource

if TYPE_CHECKING:  # torch stays out of processes that only read (e.g. Ray tasks)
    from ..arrays import ArrayDataset

DIR_KINDS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "parquet", "webdataset")


PLAN_KINDS = {"imagefolder": ImageFolderSource, "parquet": HFParquetSource, "webdataset": WebDatasetSource}


class DigitsSource(Source):
    """scikit-learn's bundled digits, 32×32 grayscale (see :mod:`sem_dist.data.sources.digits` for why)."""

    kind = "digits"
    location = None

    def split_names(self) -> list[str]:
        return ["train", "test"]

    def split(self, name: str) -> Split:
        from .digits import CLASSES, load_digits

        def read(policy: BadRecordPolicy):
            d = load_digits(name)
            return chunked(d.ids, d.images, d.labels, f"digits?split={name}")

        return Split(name, f"digits?split={name}", list(CLASSES), read)


class CanonicalSource(Source):
    """A folder with ``manifest.json`` (one split) or with split folders that each have one."""

    kind = "canonical"

    def __init__(self, uri: str, storage: StorageOptions | None, options: dict[str, str]):
        super().__init__(redact_uri(uri), options)
        if options:
            raise DataError(f"{self.display}: unknown option(s) {', '.join(sorted(options))}")
        self.location = open_location(uri, storage)

    def split_names(self) -> list[str]:
        names = self.location.names()
        if MANIFEST in names:
            return [""]
        splits = [n for n in names if self.location.child(n).exists(MANIFEST)]
        if not splits:
            read_manifest(self.location)  # raises the error that says what is there instead
        return splits

    def split(self, name: str) -> Split:
        folder = self.location.child(name) if name else self.location
        manifest = read_manifest(folder)
        return Split(name, folder.display, list(manifest.classes),
                     lambda policy: iter_dataset(folder, manifest, policy), manifest, folder)


@dataclass
class SourceSpec:
    kind: str
    target: str = field(repr=False)  # DIR or URI, credentials included: never shown
    options: dict[str, str]
    split: str | None

    @property
    def display(self) -> str:
        if self.kind == "digits":
            return "digits"
        return redact_uri(self.target) if self.kind == "canonical" else f"{self.kind}:{redact_uri(self.target)}"


def parse_spec(spec: str) -> SourceSpec:
    base, query = split_options(spec)
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise DataError(f"{redact_uri(spec)}: cannot parse the options after '?'") from None
    split = options.pop("split", None)
    if base == "digits":
        return SourceSpec("digits", "", options, split)
    kind, sep, rest = base.partition(":")
    if sep and kind in DIR_KINDS:
        if not rest:
            raise DataError(f"{kind}: needs a folder, e.g. {kind}:/data/{kind}")
        return SourceSpec(kind, rest, options, split)
    return SourceSpec("canonical", base, options, split)


def open_source(spec: str | SourceSpec, storage: StorageOptions | None = None) -> Source:
    s = parse_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "digits":
        if s.options:
            raise DataError(f"digits: unknown option(s) {', '.join(sorted(s.options))}")
        return DigitsSource("digits", {})
    if s.kind == "canonical":
        return CanonicalSource(s.target, storage, s.options)
    location = open_location(s.target, storage)
    if s.kind in PLAN_KINDS:
        # readers in Ray tasks reach the same endpoint whether it came from a flag or the environment, and
        # resolve the same profile name (--s3-profile) on their own node
        storage = storage or StorageOptions()
        return PLAN_KINDS[s.kind](location, s.display, s.options,
                                  StorageOptions(storage.endpoint(), storage.s3_profile))
    if s.options:
        raise DataError(f"{s.display}: unknown option(s) {', '.join(sorted(s.options))}")
    cls = MnistSource if s.kind in ("mnist", "fashion-mnist") else CifarSource
    return cls(s.kind, location, s.display, {})


def open_split(spec: str, split: str | None = None, storage: StorageOptions | None = None) -> Split:
    """The named split of a source spec (``split`` wins over ``?split=``)."""
    s = parse_spec(spec)
    source = open_source(s, storage)
    return source.split(source.resolve_split(split or s.split))


def iter_batches(uri: str, split: str | None = None, batch_size: int = READ_BATCH_ROWS, *,
                 storage: StorageOptions | None = None, on_bad_record: str = "fail"
                 ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """``(ids, uint8 NCHW images, int64 labels)`` batches of a split, streamed shard by shard (memory is
    bounded by one shard's read batch plus ``batch_size``); feeds ``perturb.regenerate.regenerate``."""
    sp = open_split(uri, split, storage)
    for chunk in rebatch(sp.records(BadRecordPolicy(on_bad_record)), batch_size):
        yield chunk.as_tuple()


def collect(chunks) -> Chunk:
    """Concatenate a (checked) record stream into one chunk."""
    return concat(list(chunks))


def load_dataset(uri: str, split: str | None = None, *, storage: StorageOptions | None = None,
                 on_bad_record: str = "fail") -> ArrayDataset:
    """A whole split in memory. Protected canonical datasets fill ``noise`` (when stored) and every
    canonical dataset puts its manifest dict in ``meta["manifest"]``."""
    from ..arrays import ArrayDataset

    sp = open_split(uri, split, storage)
    policy = BadRecordPolicy(on_bad_record)
    data = collect(sp.records(policy))
    meta = {"source": sp.display, "skipped": policy.skipped}
    if sp.manifest is not None:
        meta["manifest"] = dataclasses.asdict(sp.manifest)
    return ArrayDataset(data.ids, np.ascontiguousarray(data.images), data.labels, sp.classes, data.noise, meta)
