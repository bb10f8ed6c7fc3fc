"""What a reader knows about a split before (or without) reading its pixels.

Shared by the in-process reader (:mod:`sem_dist.engine.input`) and the Ray Data readers
(``sem_dist.distributed.dataset.read_rows`` re-exports it, as the data-plane interface names it there).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .canonical import Manifest
from .storage import DataError

# The one threshold of the data plane: splits with this many bytes of pixels or more are never gathered into
# one process or one Ray object; they stream through Ray Data or are read where the work runs (or the command
# refuses in one line naming the flag that streams). Tests and benchmarks lower it through the variable.
STREAM_MIN_BYTES = 256 << 20
STREAM_MIN_BYTES_ENV = "SEM_DIST_STREAM_MIN_BYTES"


def stream_min_bytes() -> int:
    """``STREAM_MIN_BYTES``, or ``$SEM_DIST_STREAM_MIN_BYTES`` when set (bytes of uint8 pixels)."""
    raw = os.environ.get(STREAM_MIN_BYTES_ENV)
    try:
        return STREAM_MIN_BYTES if raw is None else int(raw)
    except ValueError:
        raise ValueError(f"${STREAM_MIN_BYTES_ENV} must be a whole number of bytes, not {raw!r}") from None


class SplitTooLarge(DataError):
    """A split at or above ``stream_min_bytes()`` that would have been gathered into one process or object."""


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


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

    @property
    def pixel_bytes(self) -> int | None:
        """The split's decoded size (uint8 pixels), None while the count is unknown."""
        return None if self.count is None else self.count * self.channels * self.height * self.width
