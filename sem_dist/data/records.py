"""Record streams: chunks of ``(ids, uint8 NCHW images, int64 labels)`` with the place they came from,
the bad-record policy, the checks every source shares, and re-batching to shard or batch sizes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .storage import DataError

BAD_RECORD_MODES = ("fail", "skip")


class BadRecord(DataError):
    """A record ``--on-bad-record fail`` stops at (the message names its id and where it is)."""


@dataclass
class Chunk:
    ids: list[str]
    images: np.ndarray  # (n, C, H, W) uint8
    labels: np.ndarray  # (n,) int64
    where: str  # file or shard the rows came from, for error messages
    noise: np.ndarray | None = None  # (n, C, H, W) int8 for protected canonical data

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> "Chunk":
        return Chunk([self.ids[i] for i in idx], self.images[idx], self.labels[idx], self.where,
                     None if self.noise is None else self.noise[idx])

    def as_tuple(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.ids, self.images, self.labels


@dataclass
class BadRecordPolicy:
    """``fail``: the first bad record stops the run with a one-line error naming it and where it is.
    ``skip``: it is left out and listed (id, where, reason) for the manifest."""

    mode: str = "fail"
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in BAD_RECORD_MODES:
            raise DataError(f"--on-bad-record {self.mode!r}: choose fail or skip")

    def reject(self, record_id: str, where: str, reason: str) -> None:
        if self.mode == "fail":
            raise BadRecord(f"{where}: record {record_id!r}: {reason} (--on-bad-record skip leaves it out)")
        self.skipped.append({"id": record_id, "where": where, "reason": reason})


def checked(chunks: Iterable[Chunk], num_classes: int, policy: BadRecordPolicy, what: str,
            allow_empty: bool = False) -> Iterator[Chunk]:
    """Reject labels outside [0, num_classes) and repeated ids; refuse an empty result unless
    ``allow_empty`` (one shard of many may lose all its rows to ``skip``).

    Image decoding, modes and sizes are checked where images are decoded (each source)."""
    seen: set[str] = set()
    total = 0
    for chunk in chunks:
        keep = []
        for i, (rid, label) in enumerate(zip(chunk.ids, chunk.labels)):
            if not 0 <= int(label) < num_classes:
                policy.reject(rid, chunk.where, f"label {int(label)} is outside [0, {num_classes})")
            elif rid in seen:
                policy.reject(rid, chunk.where, "duplicate id (ids must be unique)")
            else:
                seen.add(rid)
                keep.append(i)
        if keep:
            total += len(keep)
            yield chunk if len(keep) == len(chunk) else chunk.take(np.asarray(keep))
    if total == 0 and not allow_empty:
        skipped = f" after skipping {len(policy.skipped)} bad records" if policy.skipped else ""
        raise DataError(f"{what}: the dataset is empty{skipped}")


def rebatch(chunks: Iterable[Chunk], rows: int) -> Iterator[Chunk]:
    """Chunks of exactly ``rows`` rows (the last one possibly shorter), in order."""
    pending: list[Chunk] = []
    count = 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(chunk)
        while count >= rows:
            merged = concat(pending)
            yield merged.take(np.arange(rows))
            rest = merged.take(np.arange(rows, len(merged)))
            pending, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield concat(pending)


def concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    wheres = list(dict.fromkeys(c.where for c in chunks))
    noise = None if any(c.noise is None for c in chunks) else np.concatenate([c.noise for c in chunks])
    return Chunk([i for c in chunks for i in c.ids], np.concatenate([c.images for c in chunks]),
                 np.concatenate([c.labels for c in chunks]), ", ".join(wheres), noise)
