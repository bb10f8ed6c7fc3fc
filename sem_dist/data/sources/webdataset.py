"""WebDataset tar shards (``webdataset:URI``): ``*.tar`` files whose members ``KEY.EXT`` group into samples.

A sample's key is the member path up to the first dot of its file name (``a/0001.jpg`` and ``a/0001.cls``
are sample ``a/0001``); members of one sample are adjacent, as WebDataset writers put them. The image is
the first of ``jpg, jpeg, png, webp`` present (``?image=EXT`` picks one), the label the first of
``cls, txt, json`` (``?label=EXT``): an integer, or a class name (text, or JSON string) looked up in the
classes; JSON may also be ``{"label": …}``. Classes: ``names=a,b,c``, ``classes=N`` (integer labels
``0..N-1``), else discovered by one pass over the shards' label members (integers → ``0..max``; names →
sorted). Ids are the sample keys. Tars are read as streams with the standard library: nothing is
unpickled, and nothing but these members is decoded.
"""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Iterator

from ..storage import DataError, Location, StorageOptions, storage_errors
from .plan import RawRecord, SourcePlan, UnitReader, class_names, portable_uri
from .shardfiles import ShardFilesSource

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTS = ("cls", "txt", "json")


def tar_samples(fileobj, where: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample of a tar stream, in order."""
    key, parts = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                folder, name = posixpath.split(member.name)
                stem, dot, ext = name.partition(".")
                if not member.isfile() or not dot or name.startswith("."):
                    continue
                sample = posixpath.join(folder, stem)
                if sample != key:
                    if key is not None:
                        yield key, parts
                    key, parts = sample, {}
                parts[ext.lower()] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise DataError(f"{where}: not a readable tar file ({exc})") from None
    if key is not None:
        yield key, parts


def raw_label(parts: dict[str, bytes], ext: str) -> int | str:
    """The label member's value: an int or a class name. ValueError when it is neither."""
    text = parts[ext].decode("utf-8").strip()
    if ext == "json":
        value = json.loads(text)
        value = value.get("label", value.get("cls")) if isinstance(value, dict) else value
    else:
        value = int(text) if ext == "cls" or text.lstrip("-").isdigit() else text
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ValueError(f"unusable label {text[:40]!r}")
    return value


class WebDatasetReader(UnitReader):
    def __init__(self, uri: str, storage: StorageOptions, location: Location | None, image: str | None,
                 label: str | None, classes: list[str] | None, keep_below: int | None):
        super().__init__(uri, storage, location)
        self.image, self.label, self.keep_below = image, label, keep_below
        self.index = {c: i for i, c in enumerate(classes or [])}

    def samples(self, unit: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        where = self.location.child(unit)
        with storage_errors(where), self.location.fs.open(where.path, "rb") as fh:
            yield from tar_samples(fh, where.display)

    def pick(self, parts: dict[str, bytes], wanted: str | None, exts: tuple[str, ...]) -> str | None:
        return wanted if wanted in parts else None if wanted else next((e for e in exts if e in parts), None)

    def labels(self, unit: str) -> Iterator[int | str]:
        """The raw labels of a shard (for class discovery); unusable ones are left to the real read."""
        for _, parts in self.samples(unit):
            ext = self.pick(parts, self.label, LABEL_EXTS)
            try:
                yield raw_label(parts, ext) if ext else None
            except ValueError:
                continue

    def records(self, unit: str) -> Iterator[RawRecord]:
        for key, parts in self.samples(unit):
            img, lab = self.pick(parts, self.image, IMAGE_EXTS), self.pick(parts, self.label, LABEL_EXTS)
            label, error = -1, ""
            try:
                value = raw_label(parts, lab) if lab else None
                if value is None:
                    error = f"no label member ({'/'.join([self.label] if self.label else LABEL_EXTS)})"
                elif isinstance(value, str):
                    label = self.index.get(value, -1)
                    error = "" if label >= 0 else f"label {value!r} is not one of the classes"
                else:
                    label = value
            except (ValueError, UnicodeDecodeError) as exc:
                error = f"label: {exc}"
            if not img and not error:
                error = f"no image member ({'/'.join([self.image] if self.image else IMAGE_EXTS)})"
            if isinstance(label, int) and self.keep_below is not None and label >= self.keep_below:
                continue  # a class left out by ?classes=N
            yield RawRecord(key, label, parts.get(img, b"") if img else b"", where=unit, error=error)


class WebDatasetSource(ShardFilesSource):
    kind = "webdataset"
    ext = ".tar"
    extra_options = ("image", "label")

    def plan(self, name: str) -> SourcePlan:
        files = self.split_files(name)
        display = self.split_display(name)
        image, label = self.options.get("image"), self.options.get("label")
        for opt, value, exts in (("image", image, IMAGE_EXTS), ("label", label, LABEL_EXTS)):
            if value is not None and value not in exts:
                raise DataError(f"{display}: {opt}={value!r}: choose one of {', '.join(exts)}")
        found = None
        if "names" not in self.options and "classes" not in self.options:
            found = self._discover(files, WebDatasetReader(portable_uri(self.location), self.storage,
                                                           self.location, image, label, None, None))
        classes = class_names(self.options, found, display)
        keep = len(classes) if "classes" in self.options else None
        reader = WebDatasetReader(portable_uri(self.location), self.storage, self.location, image, label,
                                  classes, keep)
        return SourcePlan(display, name, classes, files, reader, self.channels, self.resize, dict(self.options))

    def _discover(self, files: list[str], reader: WebDatasetReader) -> list[str]:
        """Class names from one pass over the label members (give ?classes= or ?names= to skip it)."""
        values = {v for f in files for v in reader.labels(f) if v is not None}
        ints = {v for v in values if isinstance(v, int)}
        if ints and len(ints) < len(values):
            raise DataError(f"{self.display}: labels mix integers and names; give ?names=a,b,c")
        if ints:
            return [str(i) for i in range(max(ints) + 1)]
        if not values:
            raise DataError(f"{self.display}: no labels found; give ?classes=N or ?names=a,b,c")
        return sorted(values)
