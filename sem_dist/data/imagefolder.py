"""Class-per-folder image trees (``DIR/<class>/**/*.jpg|jpeg|png``), e.g. an ImageNet subset or a face set.

Options (``imagefolder:DIR?classes=100&size=224&mode=RGB``): ``classes=N`` keeps the first N classes in
sorted order (the paper's ImageNet-100 subset); ``size=S`` resizes the shorter side to S and centre-crops
S×S; ``mode=RGB|L`` sets the channel count (default RGB). Ids are paths relative to DIR. Images directly
in DIR have no class folder, hence no label: they are bad records. Other files are ignored with a note.
"""
from __future__ import annotations

import posixpath
import sys

import numpy as np

from .images import BadImage, ImageDecoder
from .records import BadRecordPolicy, Chunk
from .source import CHUNK_ROWS, Source, Split
from .storage import DataError, Location, storage_errors

EXTENSIONS = (".jpg", ".jpeg", ".png")
OPTIONS = ("classes", "size", "mode")


def _positive_int(options: dict[str, str], key: str, display: str) -> int | None:
    if key not in options:
        return None
    try:
        value = int(options[key])
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"{display}: {key}={options[key]!r} must be a positive integer")
    return value


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, location: Location, display: str, options: dict[str, str]):
        super().__init__(display, options)
        self.location = location
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise DataError(f"{display}: unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(OPTIONS)})")
        self.max_classes = _positive_int(options, "classes", display)
        self.size = _positive_int(options, "size", display)
        mode = options.get("mode", "RGB").upper()
        if mode not in ("RGB", "L"):
            raise DataError(f"{display}: mode={options['mode']!r}: choose RGB or L")
        self.channels = 3 if mode == "RGB" else 1

    def split_names(self) -> list[str]:
        return [""]

    def _listing(self) -> tuple[list[str], list[tuple[str, int]], list[str]]:
        """(classes, [(relative path, label)], ignored relative paths), all sorted."""
        root = self.location.path.rstrip("/")
        with storage_errors(self.location):
            if not self.location.fs.isdir(root):
                raise DataError(f"{self.display}: no such folder")
            entries = self.location.fs.find(root, withdirs=True, detail=True)
        files = sorted(posixpath.relpath(p, root) for p, e in entries.items() if e["type"] != "directory")
        files = [f for f in files if not any(part.startswith(".") for part in f.split("/"))]
        classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        if self.max_classes is not None:
            if self.max_classes > len(classes):
                raise DataError(f"{self.display}: classes={self.max_classes} but only {len(classes)} class folders")
            classes = classes[:self.max_classes]
        label_of = {c: i for i, c in enumerate(classes)}
        kept, ignored = [], []
        for f in files:
            if not f.lower().endswith(EXTENSIONS):
                ignored.append(f)
            elif "/" not in f:
                kept.append((f, -1))  # no class folder: rejected as a bad record when read
            elif f.split("/", 1)[0] in label_of:
                kept.append((f, label_of[f.split("/", 1)[0]]))
        return classes, kept, ignored

    def split(self, name: str) -> Split:
        classes, files, ignored = self._listing()
        if ignored:
            print(f"note: {self.display}: ignored {len(ignored)} file(s) that are not {'/'.join(EXTENSIONS)} "
                  f"(e.g. {ignored[0]})", file=sys.stderr)

        def read(policy: BadRecordPolicy):
            decoder = ImageDecoder(self.channels, resize=self.size)
            for s in range(0, len(files), CHUNK_ROWS):
                ids, images, labels = [], [], []
                for rel, label in files[s:s + CHUNK_ROWS]:
                    if label < 0:
                        policy.reject(rel, self.display, "not inside a class folder, so it has no label")
                        continue
                    try:
                        images.append(decoder.decode(self.location.read_bytes(rel), rel))
                    except BadImage as exc:
                        policy.reject(rel, self.display, str(exc))
                        continue
                    ids.append(rel)
                    labels.append(label)
                if ids:
                    yield Chunk(ids, np.stack(images), np.asarray(labels, dtype=np.int64), self.display)

        return Split(name, self.display, classes, read, location=self.location)
