"""What a reader knows about a split before (or without) reading its pixels.

Shared by the in-process reader (:mod:`sem_dist.stages.read`) and the Ray Data readers
(``sem_dist.distributed.dataset.read_rows`` re-exports it, as the data-plane interface names it there).
"""
from __future__ import annotations

from dataclasses import dataclass

from .canonical import Manifest


@dataclass
class DatasetInfo:
    count: int | None  # known for canonical data (manifest); None if unknown before reading
    channels: int
    height: int
    width: int
    classes: list[str]
    source: dict  # what the manifest records: redacted uri, split, options, resize info
    manifest: Manifest | None = None  # set for canonical inputs

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    @property
    def image_side(self) -> int:
        return min(self.height, self.width)
