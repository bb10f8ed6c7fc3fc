"""What Algorithm 4's CPU work needs, free of torch so that Ray's read and write actors never import it: the job
as plain values, a unit read into its output shards (:class:`UnitInput`), the shard names, and which units a
run has (:func:`unit_count`). The model's part is in :mod:`sem_dist.perturb.algorithm4`, the in-process run of
whole units in :mod:`sem_dist.engine.local`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..data.canonical import SHARD_PREFIX, read_manifest, read_shard, shard_name
from ..data.convert import default_shard_rows
from ..data.records import BadRecordPolicy, Chunk, checked, concat, rebatch
from ..data.sources.plan import ImageSpec, SourcePlan
from ..data.storage import StorageOptions, open_location
from ..data.unique import hashes_text

if TYPE_CHECKING:
    from .input import Input
    from .ledger import UnitResult


def unit_shard_name(index: int, part: int) -> str:
    """The name of output shard ``part`` of plan unit ``index`` (a unit's shard count is known only
    once it is read, so names must not depend on the units before it)."""
    return f"{SHARD_PREFIX}{index:05d}-{part:05d}.parquet"


@dataclass
class RegenJob:
    """What any worker needs to run units, as plain values: URIs are redacted (credentials come from each
    node's own environment, never from the driver); a plan's reader pickles without credentials too."""

    out_uri: str  # shards go here, at their final keys
    staging_uri: str  # the ledger
    method_uri: str  # the frozen method; "" for a conversion (no noise)
    storage: StorageOptions  # endpoint and profile name each node resolves itself; never a secret
    keep_noise: bool
    on_bad_record: str
    input_uri: str = ""  # a canonical input's folder, or:
    plan: SourcePlan | None = None  # a file-backed source's units
    image: ImageSpec | None = None  # the plan's geometry, fixed by the driver so every unit decodes alike
    shard_rows: int | None = None  # rows per output shard of a plan unit (None: default_shard_rows)
    device: str = "cpu"


def shard_id_hash(job: RegenJob, chunk: Chunk) -> str | None:
    """A plan unit's shard ids as hashes for the commit's check across units (canonical ids are unique by
    construction)."""
    return hashes_text(chunk.ids) if job.plan is not None else None


class UnitInput:
    """Reads units of one job (storage and the input manifest opened once): each unit's output shards as
    ``(name, records)``, read, decoded, resized and checked — all the work before the model."""

    def __init__(self, job: RegenJob):
        self.job = job
        if job.plan is None:
            self.src = open_location(job.input_uri, job.storage)
            self.manifest = read_manifest(self.src)

    def parts(self, index: int, policy: BadRecordPolicy) -> Iterator[tuple[str, Chunk]]:
        """Unit ``index``'s output shards, in order, each yielded as soon as it is full."""
        if self.job.plan is None:
            info = self.manifest.shards[index]
            chunks = list(checked(read_shard(self.src, info, self.manifest, policy), self.manifest.num_classes,
                                  policy, f"{self.src.display}/{info.name}", allow_empty=True))
            if chunks:
                yield shard_name(index), concat(chunks)
            return
        plan, image = self.job.plan, self.job.image
        records = checked(plan.unit_chunks(plan.units[index], image, policy), len(plan.classes), policy,
                          plan.display, allow_empty=True)
        rows = self.job.shard_rows or default_shard_rows(image.channels, image.height, image.width)
        for k, part in enumerate(rebatch(records, rows)):
            yield unit_shard_name(index, k), part


def unit_count(inp: "Input", shard_rows: int | None) -> int | None:
    """How many units regeneration runs over (one Ray task each), or None when the record stream is re-cut
    into ``shard_rows`` units in this process instead."""
    if inp.plan is not None:
        return len(inp.plan.units)
    if inp.canonical and shard_rows is None:
        return len(inp.info.manifest.shards)
    return None


def pending_units(count: int, done: "dict[int, UnitResult]") -> list[int]:
    return [i for i in range(count) if i not in done]
