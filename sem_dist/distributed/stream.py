"""Feeding Algorithm 1 from a streamed dataset shard: a seeded local shuffle buffer over each epoch's rows
and a position (epoch, rows consumed) from which the same sequence resumes exactly.

A Ray Train worker sees its shard of an image-rows dataset (see ``distributed/dataset.py``) as one pass
per epoch, in an order Ray Data keeps deterministic (``preserve_order``). Rows pass through a buffer of
``buffer_rows``: once full, every incoming row replaces a uniformly drawn buffered one, which is emitted;
at the epoch's end the rest leave in a random order. The draws come from (seed, epoch, rank), so an epoch's
order is a pure function of those and of the shard, and a resumed worker replays its epoch from the start,
discarding the rows it had already consumed (reading is cheap next to the K_u·J + K_a gradient passes
each row costs). Steps run across epoch ends without dropping rows, as ``training.sampling.StepSampler`` does.

Nothing here imports Ray: ``epoch_batches`` is any callable returning one pass of numpy batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..data.storage import DataError
from ..runtime.rng import step_seed

DEFAULT_SHUFFLE_BUFFER_ROWS = 4096
BAD_RECORD_POLICIES = ("fail", "skip")


@dataclass
class StreamPosition:
    """Where a worker is in its stream: the epoch and how many of that epoch's shuffled rows it consumed."""

    epoch: int = 0
    offset: int = 0

    def to_list(self) -> list[int]:
        return [self.epoch, self.offset]


def buffer_shuffle(batches: Iterable[dict], buffer_rows: int, rng: np.random.Generator
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """(image, label) rows of ``batches`` (dicts of "image" (n,C,H,W) and "label" (n,)) reordered through a
    buffer of ``buffer_rows`` rows. A row can leave at most ``buffer_rows`` places earlier than it came."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    for batch in batches:
        for image, label in zip(batch["image"], batch["label"]):
            if len(images) < buffer_rows:
                images.append(image)
                labels.append(int(label))
                continue
            j = int(rng.integers(buffer_rows))
            yield images[j], labels[j]
            images[j], labels[j] = image, int(label)
    for j in rng.permutation(len(images)):
        yield images[j], labels[j]


class ShardStream:
    """This worker's rows of every global batch, ``batch_rows`` at a time, from ``position`` on."""

    def __init__(self, epoch_batches: Callable[[], Iterable[dict]], batch_rows: int, seed: int, rank: int,
                 buffer_rows: int = DEFAULT_SHUFFLE_BUFFER_ROWS, position: StreamPosition | None = None):
        if batch_rows < 1 or buffer_rows < 1:
            raise ValueError("batch rows and shuffle buffer rows must be >= 1")
        self.epoch_batches, self.batch_rows, self.seed, self.rank = epoch_batches, batch_rows, seed, rank
        self.buffer_rows = buffer_rows
        self.position = position or StreamPosition()
        self._rows: Iterator[tuple[np.ndarray, int]] | None = None

    def _open_epoch(self) -> None:
        rng = np.random.default_rng(step_seed(self.seed, self.position.epoch, purpose=f"shard-shuffle\x00{self.rank}"))
        self._rows = buffer_shuffle(self.epoch_batches(), self.buffer_rows, rng)
        for _ in range(self.position.offset):  # replay to where the checkpoint left this epoch
            if next(self._rows, None) is None:
                raise ValueError(f"epoch {self.position.epoch} of this shard has fewer than "
                                 f"{self.position.offset} rows: the data changed since the checkpoint")

    def _next_row(self) -> tuple[np.ndarray, int]:
        if self._rows is None:
            self._open_epoch()
        row = next(self._rows, None)
        if row is None:
            if self.position.offset == 0:
                raise ValueError("cannot train on an empty dataset shard")
            self.position = StreamPosition(self.position.epoch + 1, 0)
            self._open_epoch()
            return self._next_row()
        self.position.offset += 1
        return row

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float [0,1] and int64 labels (as ``ArrayDataset.batch``)."""
        rows = [self._next_row() for _ in range(self.batch_rows)]
        x = torch.from_numpy(np.stack([r[0] for r in rows])).float().div_(255.0)
        return x, torch.tensor([r[1] for r in rows], dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()


def rows_per_worker(batch_size: int, world: int) -> int:
    """A worker's share of the global batch B. The shards of a streaming split have equal row counts, and
    Ray Data starts a new epoch only when all workers ask for it together: equal shares keep their epoch
    ends on the same step."""
    if batch_size % world:
        raise ValueError(f"the batch size ({batch_size}) must be a multiple of --workers ({world}) when "
                         "Algorithm 1 reads a streamed dataset")
    return batch_size // world


def check_good_rows(batch: dict, policy: str) -> dict:
    """The bad-record policy on a batch of image rows: ``fail`` raises naming the first bad id, ``skip``
    drops bad rows (the regeneration stage lists them in the manifest)."""
    errors = batch.get("error")
    if errors is None:
        return batch
    bad = np.asarray([bool(e) for e in errors])
    if not bad.any():
        return batch
    if policy == "fail":
        i = int(np.argmax(bad))
        raise DataError(f"bad record {batch['id'][i]}: {errors[i]} (--on-bad-record skip leaves it out)")
    return {k: np.asarray(v)[~bad] for k, v in batch.items()}
