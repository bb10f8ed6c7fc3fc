"""File-backed sources as a *plan*: a short list of work units (class folders, Parquet files, tar shards)
and a reader that turns one unit into raw records. The same plan runs in this process (one unit after
another) and on Ray Data (one task per unit, see ``sem_dist.distributed.source_rows``), so both paths list,
read, decode and resize with the same code and give the same pixels.

A raw record carries image bytes (or a file to fetch), an integer label, or the reason it is bad before
decoding. :func:`decode_records` turns a list of them into an *image-rows* batch: ``id`` (str),
``image`` (uint8 N×C×H×W, zeros for a bad row), ``label`` (int64), ``error`` ("" or the reason).
"""
from __future__ import annotations

import itertools
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..images import CHANNEL_MODES, BadImage, check_size, decode_image
from ..info import DatasetInfo
from ..records import BadRecordPolicy, Chunk
from ..storage import DataError, Location, StorageOptions, open_location, storage_errors
from .split import Split, source_record

DECODE_ROWS = 64  # records per decode batch: small, so variable-size originals never pile up in memory
RESIZE_RULE = "shorter side to S (bicubic), then the centre S×S crop"
OPTIONS = ("size", "mode")  # every plan source takes these; kinds add their own


@dataclass
class RawRecord:
    id: str
    label: int  # -1 when unknown (``error`` then says why)
    data: bytes = b""  # the encoded image, or b"" when ``ref`` names a file to fetch
    ref: str = ""  # a file relative to the source root, fetched when decoded
    where: str = ""  # the file the record is in, when the id does not say it (prefixes its errors)
    error: str = ""  # why the record is bad before decoding, else ""


@dataclass(frozen=True)
class ImageSpec:
    """The dataset's decoded geometry; ``resize`` set means every image is resized to it."""

    channels: int
    height: int
    width: int
    resize: int | None = None


def portable_uri(loc: Location) -> str:
    """A URI for ``loc`` that another process can open: absolute for local folders, redacted otherwise."""
    return loc.path if loc.is_local else loc.display


class UnitReader(ABC):
    """Reads one work unit into raw records. Pickled into Ray tasks *without* credentials: a worker opens
    the location from the redacted URI with its own credential chain, as every node of a cluster does."""

    fetches = False  # True when records name files to fetch (one file per image) instead of carrying bytes

    def __init__(self, uri: str, storage: StorageOptions, location: Location | None = None):
        self.uri, self.storage, self._location = uri, storage, location

    @property
    def location(self) -> Location:
        if self._location is None:
            self._location = open_location(self.uri, self.storage)
        return self._location

    def __getstate__(self):
        return {**self.__dict__, "_location": None}

    @abstractmethod
    def records(self, unit: str) -> Iterator[RawRecord]:
        ...

    def fetch(self, refs: list[str]) -> list[bytes]:
        """The files' bytes; object stores fetch them concurrently (one round trip of latency per batch,
        not one per file)."""
        loc = self.location
        paths = [loc.child(r).path for r in refs]
        with storage_errors(loc):
            got = loc.fs.cat(paths) if len(paths) > 1 else {p: loc.fs.cat_file(p) for p in paths}
        return [got[p] for p in paths]


def decode_records(records: Iterable[RawRecord], fetch: Callable[[list[str]], list[bytes]], spec: ImageSpec,
                   num_classes: int) -> dict[str, np.ndarray]:
    """Raw records → an image-rows batch (see the module docstring). Storage failures propagate: they
    are not bad records."""
    records = list(records)
    errors = [r.error or ("" if 0 <= r.label < num_classes else f"label {r.label} is outside [0, {num_classes})")
              for r in records]
    wanted = [i for i, r in enumerate(records) if not errors[i] and not r.data]
    fetched = dict(zip(wanted, fetch([records[i].ref for i in wanted]) if wanted else []))
    blank = np.zeros((spec.channels, spec.height, spec.width), np.uint8)
    images = []
    for i, r in enumerate(records):
        image = blank
        if not errors[i]:
            try:
                image = decode_image(fetched.get(i, r.data), spec.channels, spec.resize)
                check_size(image, (spec.height, spec.width))
            except BadImage as exc:
                errors[i], image = str(exc), blank
        images.append(image)
    return {"id": np.asarray([r.id for r in records], dtype=object),
            "image": np.stack(images) if images else np.zeros((0, *blank.shape), np.uint8),
            "label": np.asarray([r.label for r in records], dtype=np.int64),
            "error": np.asarray([f"{r.where}: {e}" if e and r.where else e for r, e in zip(records, errors)],
                                dtype=object)}


def batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


@dataclass
class SourcePlan:
    display: str  # redacted, with ?split= when the source has splits
    split: str
    classes: list[str]
    units: list[str]
    reader: UnitReader
    channels: int
    resize: int | None
    options: dict[str, str] = field(default_factory=dict)

    def image_spec(self) -> ImageSpec:
        """Geometry: ``size`` when resizing, else the first decodable image's (read here: one record)."""
        if self.resize is not None:
            return ImageSpec(self.channels, self.resize, self.resize, self.resize)
        for unit in self.units:
            for r in self.reader.records(unit):
                if r.error:
                    continue
                try:
                    arr = decode_image(r.data or self.reader.fetch([r.ref])[0], self.channels)
                except BadImage:
                    continue
                return ImageSpec(self.channels, arr.shape[1], arr.shape[2])
        return ImageSpec(self.channels, 0, 0)  # nothing decodes: every record is bad, as it will say

    def info(self, image: ImageSpec) -> DatasetInfo:
        """What is known before reading pixels (``image`` from :meth:`image_spec`), as the manifest records it."""
        return DatasetInfo(None, image.channels, image.height, image.width, list(self.classes),
                           source_record(self.as_split(), self.options))

    def resize_record(self) -> dict | None:
        return {"size": self.resize, "rule": RESIZE_RULE} if self.resize else None

    def unit_chunks(self, unit: str, spec: ImageSpec, policy: BadRecordPolicy) -> Iterator[Chunk]:
        """One unit decoded in batches of ``DECODE_ROWS``, bad rows to ``policy``."""
        for batch in batched(self.reader.records(unit), DECODE_ROWS):
            rows = decode_records(batch, self.reader.fetch, spec, len(self.classes))
            keep = [i for i, e in enumerate(rows["error"]) if not e]
            for i in (i for i, e in enumerate(rows["error"]) if e):
                policy.reject(rows["id"][i], self.display, rows["error"][i])
            if keep:
                yield Chunk([rows["id"][i] for i in keep], rows["image"][keep], rows["label"][keep], self.display)

    def chunks(self, policy: BadRecordPolicy) -> Iterator[Chunk]:
        """The in-process run of the plan: unit after unit."""
        spec = self.image_spec()
        for unit in self.units:
            yield from self.unit_chunks(unit, spec, policy)
        ignored = getattr(self.reader, "ignored", None)
        if ignored:
            print(f"note: {self.display}: ignored {len(ignored)} file(s) that are not images "
                  f"(e.g. {ignored[0]})", file=sys.stderr)

    def as_split(self, location: Location | None = None) -> Split:
        return Split(self.split, self.display, list(self.classes), self.chunks, location=location,
                     resize=self.resize_record())


# ---- options every plan source shares -------------------------------------------------------------

def positive_int(options: dict[str, str], key: str, display: str) -> int | None:
    if key not in options:
        return None
    try:
        value = int(options[key])
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"{display}: {key}={options[key]!r} must be a positive integer")
    return value


def check_options(options: dict[str, str], known: tuple[str, ...], display: str) -> None:
    unknown = set(options) - set(known)
    if unknown:
        raise DataError(f"{display}: unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(known)})")


def image_options(options: dict[str, str], display: str) -> tuple[int, int | None]:
    """``(channels, resize)`` from ``mode=RGB|L`` (default RGB) and ``size=S``."""
    mode = options.get("mode", "RGB").upper()
    if mode not in CHANNEL_MODES.values():
        raise DataError(f"{display}: mode={options['mode']!r}: choose RGB or L")
    return (3 if mode == "RGB" else 1), positive_int(options, "size", display)


def class_names(options: dict[str, str], found: list[str] | None, display: str) -> list[str]:
    """Classes from ``names=a,b,c`` or those the data declares (``found``); ``classes=N`` keeps the first N
    (records of later classes are left out, as an ImageNet-100 subset of ImageNet-1k needs)."""
    keep = positive_int(options, "classes", display)
    if "names" in options:
        found = [n.strip() for n in options["names"].split(",")]
        if not all(found) or len(set(found)) != len(found):
            raise DataError(f"{display}: names= must be distinct, non-empty, comma-separated class names")
    if found is None:
        if keep is None:
            raise DataError(f"{display}: cannot tell the classes; give ?classes=N or ?names=a,b,c")
        return [str(i) for i in range(keep)]
    if keep is not None:
        if keep > len(found):
            raise DataError(f"{display}: classes={keep} but the data has only {len(found)} classes")
        found = found[:keep]
    return list(found)
