"""A source spec → the split to protect and what is known about it without its pixels (the read stage's work).

The Ray counterpart is :func:`sem_dist.distributed.dataset.read_rows` (the same :class:`DatasetInfo`).
Only a fit below the streaming threshold ever holds the whole split (:func:`load_arrays`); regeneration streams it
shard by shard, and Algorithm 1 on Ray Train streams large inputs through Ray Data (``protect.fit``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.arrays import ArrayDataset
from ..data.info import STREAM_MIN_BYTES_ENV, DatasetInfo, SplitTooLarge, mib
from ..data.records import BadRecordPolicy, concat
from ..data.sources.plan import ImageSpec, SourcePlan
from ..data.sources.registry import PLAN_KINDS, open_source, parse_spec
from ..data.sources.split import Split, source_record
from ..data.storage import DataError, Location, StorageOptions, file_identities

PLAN_SOURCES = tuple(PLAN_KINDS.values())


@dataclass
class Input:
    split: Split
    info: DatasetInfo
    location: Location | None  # the source's root, for the output-inside-input check
    spec: str = ""  # the source spec it was opened from (Ray readers open it again on the workers' side)
    plan: SourcePlan | None = None  # file-backed sources: their work units (class folders, files, tar shards)
    image: ImageSpec | None = None  # the plan's decoded geometry (every unit decodes to it)

    @property
    def canonical(self) -> bool:
        return self.info.manifest is not None

    @property
    def ray_readable(self) -> bool:
        """Whether Ray Data can read this split on its own workers (``distributed.dataset.read_rows``):
        canonical datasets and file-backed sources. Bundled digits and mnist:/cifar: files are read here."""
        return self.canonical or self.plan is not None


def open_input(spec: str, storage: StorageOptions) -> Input:
    """The split ``spec`` names: ``?split=``, else the only split, else ``train`` (a source with several
    splits and no train needs ``?split=``).
    Canonical data is described from its manifest alone, file-backed sources from their plan (a listing,
    and one decoded image unless ``?size=`` fixes the geometry); other sources decode their first chunk."""
    parsed = parse_spec(spec)
    source = open_source(parsed, storage)
    name = source.resolve_split(parsed.split, prefer="train")
    if isinstance(source, PLAN_SOURCES):
        plan = source.plan(name)
        image = plan.image_spec()
        return Input(plan.as_split(source.location), plan.info(image), source.location, spec, plan, image)
    sp = source.split(name)
    record = source_record(sp, parsed.options)
    if sp.manifest is not None:
        m = sp.manifest
        info = DatasetInfo(m.count, m.channels, m.height, m.width, list(m.classes), record, m)
    else:
        first = next(iter(sp.read(BadRecordPolicy("skip"))), None)
        if first is None:
            raise DataError(f"{sp.display}: the dataset is empty")
        c, h, w = first.images.shape[1:]
        info = DatasetInfo(None, c, h, w, list(sp.classes), record)
    return Input(sp, info, source.location, spec)


def load_arrays(inp: Input, policy: BadRecordPolicy, cap: int | None = None, hint: str = "") -> ArrayDataset:
    """The whole split in memory: what in-process Algorithm 1 samples minibatches from. With ``cap`` (bytes of
    pixels) a split larger than that stops loading there with a one-line error ending in ``hint``."""
    chunks, held = [], 0
    for chunk in inp.split.records(policy):
        held += chunk.images.nbytes
        if cap is not None and held > cap:
            raise SplitTooLarge(f"{inp.split.display} holds more than {mib(cap)} of pixels (stopped reading there), "
                            f"too many to load into one process (${STREAM_MIN_BYTES_ENV}); {hint}")
        chunks.append(chunk)
    data = concat(chunks)
    return ArrayDataset(data.ids, np.ascontiguousarray(data.images), data.labels, inp.split.classes)


def input_files(inp: Input) -> dict[str, list] | None:
    """Content identity of a file-backed input (image folders, Parquet, tars, MNIST/CIFAR files): each file's
    size and ETag (object stores) or mtime (local files), by path under the source's root. Canonical inputs
    need none: their manifest's per-shard sha256 is in the fingerprint and every shard is checked against it."""
    return None if inp.canonical or inp.location is None else file_identities(inp.location)
