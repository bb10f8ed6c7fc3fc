"""What every dataset source provides: named splits, each a class list and a stream of decoded records."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

from ..canonical import Manifest
from ..records import BadRecordPolicy, Chunk, checked
from ..storage import DataError, Location

CHUNK_ROWS = 1024  # rows per chunk a source yields; bounds decode memory for file-per-image sources


@dataclass
class Split:
    name: str  # "" for a source without splits
    display: str  # redacted, for messages and manifests
    classes: list[str]
    read: Callable[[BadRecordPolicy], Iterator[Chunk]]  # decoded chunks; bad images go to the policy
    manifest: Manifest | None = None  # set for canonical datasets
    location: Location | None = None  # where the split's files are (None for bundled data)
    resize: dict | None = None  # {"size", "rule"} when images are resized to a working size

    def records(self, policy: BadRecordPolicy) -> Iterator[Chunk]:
        """Decoded, checked records (labels in range, unique ids, not empty), streamed."""
        return checked(self.read(policy), len(self.classes), policy, self.display)


def source_record(sp: Split, options: dict[str, str]) -> dict:
    """What the manifest says about the input: redacted URI, split, options (no credentials)."""
    record = {"uri": sp.display, "split": sp.name or None, "options": dict(options)}
    if sp.resize:
        record["resize"] = sp.resize
    return record


class Source(ABC):
    kind: str
    location: Location | None  # root of the source's files, for the output-inside-input check

    def __init__(self, display: str, options: dict[str, str]):
        self.display, self.options = display, options

    @abstractmethod
    def split_names(self) -> list[str]:
        """``["train", "test"]``-style names, or ``[""]`` when the source is one split."""

    @abstractmethod
    def split(self, name: str) -> Split:
        ...

    def resolve_split(self, name: str | None, prefer: str | None = None) -> str:
        """The split ``name`` names; without a name, the only split of a source that has one, else
        ``prefer`` when the source has it (``protect`` prefers ``train``), else a one-line error."""
        names = self.split_names()
        if names == [""]:
            if name:
                raise DataError(f"{self.display}: has no splits (asked for {name!r})")
            return ""
        if not name and len(names) == 1:
            return names[0]
        if not name and prefer in names:
            return prefer
        if not name:
            raise DataError(f"{self.display}: has splits {', '.join(names)}; choose one (e.g. ?split={names[0]})")
        if name not in names:
            raise DataError(f"{self.display}: no split {name!r} (has {', '.join(names)})")
        return name


def chunked(ids: list[str], images, labels, where: str, rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
    """In-memory arrays as chunks (views, no copies)."""
    for s in range(0, len(ids), rows):
        yield Chunk(ids[s:s + rows], images[s:s + rows], labels[s:s + rows], where)
