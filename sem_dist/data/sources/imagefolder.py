"""Class-per-folder image trees (``DIR/<class>/**/*.jpg|jpeg|png|webp``), e.g. an ImageNet subset or a face set.

Options (``imagefolder:DIR?classes=100&size=224&mode=RGB``): ``classes=N`` keeps the first N classes in
sorted order (the paper's ImageNet-100 subset); ``size=S`` resizes the shorter side to S and centre-crops
S×S; ``mode=RGB|L`` sets the channel count (default RGB). Classes are the sorted, non-hidden sub-folders of
DIR; ids are paths relative to DIR. Images directly in DIR have no class folder, hence no label: they are
bad records. Other files are ignored with a note.

Work units are class folders: each is listed and read by one task (in parallel on Ray), so the driver
only lists DIR's top level.
"""
from __future__ import annotations

import posixpath
from typing import Iterator

from ..storage import DataError, Location, StorageOptions, storage_errors
from .plan import OPTIONS as IMAGE_OPTIONS
from .plan import (RawRecord, SourcePlan, UnitReader, check_options, class_names, image_options, portable_uri,
                   positive_int)
from .split import Source, Split

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
OPTIONS = ("classes",) + IMAGE_OPTIONS
ROOT_UNIT = ""  # the unit of image files directly in DIR (bad records: no class folder)


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


class ImageFolderReader(UnitReader):
    fetches = True

    def __init__(self, uri: str, storage: StorageOptions, location: Location | None, classes: list[str]):
        super().__init__(uri, storage, location)
        self.label_of = {c: i for i, c in enumerate(classes)}
        self.ignored: list[str] = []  # non-image files seen (in this process), for a note

    def records(self, unit: str) -> Iterator[RawRecord]:
        loc = self.location
        root = loc.path.rstrip("/")
        with storage_errors(loc):
            if unit == ROOT_UNIT:
                files = [e["name"] for e in loc.fs.ls(root, detail=True) if e["type"] != "directory"]
            else:
                files = loc.fs.find(posixpath.join(root, unit))
        for rel in sorted(posixpath.relpath(p, root) for p in files):
            if _hidden(rel):
                continue
            if not rel.lower().endswith(EXTENSIONS):
                self.ignored.append(rel)
            elif unit == ROOT_UNIT:
                yield RawRecord(rel, -1, error="not inside a class folder, so it has no label")
            else:
                yield RawRecord(rel, self.label_of[unit], ref=rel)


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, location: Location, display: str, options: dict[str, str], storage: StorageOptions):
        super().__init__(display, options)
        self.location, self.storage = location, storage
        check_options(options, OPTIONS, display)
        self.channels, self.resize = image_options(options, display)
        positive_int(options, "classes", display)  # checked before anything is listed

    def split_names(self) -> list[str]:
        return [""]

    def plan(self, name: str) -> SourcePlan:
        root = self.location.path.rstrip("/")
        with storage_errors(self.location):
            if not self.location.fs.isdir(root):
                raise DataError(f"{self.display}: no such folder")
            entries = self.location.fs.ls(root, detail=True)
        top = {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in entries}
        folders = sorted(n for n, t in top.items() if t == "directory" and not n.startswith("."))
        classes = class_names(self.options, folders, self.display)
        loose = any(t != "directory" and not n.startswith(".") for n, t in top.items())
        units = ([ROOT_UNIT] if loose else []) + classes
        reader = ImageFolderReader(portable_uri(self.location), self.storage, self.location, classes)
        return SourcePlan(self.display, name, classes, units, reader, self.channels, self.resize, dict(self.options))

    def split(self, name: str) -> Split:
        return self.plan(name).as_split(self.location)
