"""Sources that are a folder of data files (Parquet, tar): which files, which split each belongs to.

Splits: a file in a sub-folder belongs to the split named by that folder (``train/…``), except the
Hugging Face ``data/`` folder; otherwise a name ``SPLIT-00000-of-00004.parquet`` / ``SPLIT-000123.tar``
names it. When some file has no split, the folder is one split of all its files.
"""
from __future__ import annotations

import posixpath
import re
from abc import abstractmethod

from ..storage import DataError, Location, StorageOptions, storage_errors
from .plan import OPTIONS as IMAGE_OPTIONS
from .plan import SourcePlan, check_options, image_options, positive_int
from .split import Source, Split

_SPLIT_NAME = re.compile(r"^(?P<split>[A-Za-z][A-Za-z0-9_.]*?)-\d+(-of-\d+)?\.[a-z]+$")


def split_of(rel: str) -> str | None:
    parts = rel.split("/")
    if len(parts) > 1 and parts[0] != "data":
        return parts[0]
    m = _SPLIT_NAME.match(parts[-1])
    return m.group("split") if m else None


class ShardFilesSource(Source):
    ext = ""  # ".parquet", ".tar"
    extra_options: tuple[str, ...] = ()

    def __init__(self, location: Location, display: str, options: dict[str, str], storage: StorageOptions):
        super().__init__(display, options)
        self.location, self.storage = location, storage
        check_options(options, ("classes", "names") + IMAGE_OPTIONS + self.extra_options, display)
        self.channels, self.resize = image_options(options, display)
        positive_int(options, "classes", display)
        self._files: list[str] | None = None
        self.sizes: dict[str, int] = {}  # bytes of each data file, from the listing

    def files(self) -> list[str]:
        """Data files relative to the root, sorted; hidden files and ``_staging`` leftovers are not data."""
        if self._files is None:
            root = self.location.path.rstrip("/")
            with storage_errors(self.location):
                found = self.location.fs.find(root, detail=True) if self.location.fs.isdir(root) else {}
            self.sizes = {posixpath.relpath(p, root): int(d.get("size") or 0) for p, d in found.items()}
            self._files = [r for r in sorted(self.sizes) if r.lower().endswith(self.ext)
                           and not any(p.startswith((".", "_")) for p in r.split("/"))]
            if not self._files:
                raise DataError(f"{self.display}: no *{self.ext} files ({self.location.why_missing()})"
                                if not found else f"{self.display}: no *{self.ext} files")
        return self._files

    def split_names(self) -> list[str]:
        splits = [split_of(f) for f in self.files()]
        return [""] if None in splits else sorted(set(splits))

    def split_files(self, name: str) -> list[str]:
        return [f for f in self.files() if not name or split_of(f) == name]

    def split_display(self, name: str) -> str:
        return f"{self.display}?split={name}" if name else self.display

    @abstractmethod
    def plan(self, name: str) -> SourcePlan:
        ...

    def split(self, name: str) -> Split:
        return self.plan(name).as_split(self.location)
