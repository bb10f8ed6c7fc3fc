"""Regenerate stage (Algorithm 4): the fitted method's noise for every sample, written as protected shards
into the output's staging area, one *unit* at a time.

A unit is one output shard. For canonical inputs (and no ``--shard-rows``) unit i is input shard i: it
is read whole, checked against the manifest's sha256, decoded, its records checked (labels in range,
ids unique within the shard), perturbed in ``regen_batch_size`` batches and written as output shard i.
:func:`protect_input_shard` does exactly that wherever it runs — in this process (:func:`regenerate_local`)
or in a Ray Data actor (``sem_dist.distributed.regenerate``) — so both engines write the same bytes for
the same seed (noise depends on (seed, id); block methods such as NTGA on blocks formed inside the unit).
Other sources are re-cut into ``--shard-rows`` units by the in-process engine.

The ledger: after a unit's shard is written, one small object ``_staging/done/part-NNNNN.json`` records
it (shard info, noise totals, skipped records). Finishing a shard costs O(1) storage writes, and
``--resume`` lists ``done/`` and redoes only units without an entry (a shard written but not recorded
is simply rewritten: the same bytes). ``_staging/run.json`` ties the staging area to the run's
fingerprint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..data.arrays import ArrayDataset
from ..data.canonical import Manifest, ShardInfo, read_manifest, read_shard, shard_name, write_shard
from ..data.convert import shards_of
from ..data.records import BadRecordPolicy, Chunk, checked, concat
from ..data.storage import DataError, Location, StorageOptions, open_location
from ..perturb.methods import NoiseMethod
from ..perturb.regenerate import apply_noise, regenerate
from ..pipeline import NoiseStats
from ..progress import bar
from .read import Input

LEDGER = "done"
RUN_RECORD = "run.json"


@dataclass
class UnitResult:
    """One finished unit, as its ledger entry records it."""

    index: int
    shard: ShardInfo | None  # None when every record of the unit was skipped
    noise: NoiseStats = field(default_factory=NoiseStats)
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return self.shard.rows if self.shard else 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "UnitResult":
        raw = json.loads(text)
        return cls(raw["index"], ShardInfo(**raw["shard"]) if raw["shard"] else None, NoiseStats(**raw["noise"]),
                   raw["skipped"], raw["seconds"])


class Ledger:
    """Finished units of a run, one object each under ``staging/done/``."""

    def __init__(self, staging: Location):
        self.staging, self.folder = staging, staging.child(LEDGER)

    def open(self, fingerprint: str, resume: bool) -> None:
        """Tie the (fresh or kept) staging area to ``fingerprint``; a resumed run must match it."""
        if resume and self.staging.exists(RUN_RECORD):
            if json.loads(self.staging.read_bytes(RUN_RECORD))["fingerprint"] != fingerprint:
                raise DataError(f"{self.staging.display}: the interrupted run there used other settings or input; "
                                "pass --overwrite to start over")
            return
        self.staging.write_bytes(RUN_RECORD, json.dumps({"fingerprint": fingerprint}).encode())

    def finished(self) -> dict[int, UnitResult]:
        done = {}
        for name in self.folder.names():
            if name.endswith(".json"):
                r = UnitResult.from_json(self.folder.read_bytes(name))
                done[r.index] = r
        return done

    def record(self, result: UnitResult) -> None:
        self.folder.write_bytes(f"{shard_name(result.index)}.json", result.to_json().encode())


def protect_chunk(method: NoiseMethod, chunk: Chunk, device: torch.device, staging: Location, index: int,
                  keep_noise: bool) -> tuple[ShardInfo, NoiseStats]:
    """Algorithm 4 over one unit's records, then its protected images (and noise) to ``staging``."""
    noise = np.empty(chunk.images.shape, dtype=np.int8)
    pos = 0
    batches = ArrayDataset(chunk.ids, chunk.images, chunk.labels, []).iter_batches(method.regen_batch_size())
    for ids, part in regenerate(method, batches, device):
        noise[pos:pos + len(ids)] = part
        pos += len(ids)
    info = write_shard(staging, shard_name(index), chunk.ids, apply_noise(chunk.images, noise), chunk.labels,
                       noise if keep_noise else None)
    return info, NoiseStats().update(noise)


def protect_input_shard(method: NoiseMethod, device: torch.device, src: Location, manifest: Manifest, index: int,
                        staging: Location, keep_noise: bool, on_bad_record: str) -> UnitResult:
    """Unit ``index`` of a canonical input: its shard read whole (sha256-checked), protected, written, recorded."""
    t0 = time.perf_counter()
    policy = BadRecordPolicy(on_bad_record)
    info = manifest.shards[index]
    where = f"{src.display}/{info.name}"
    chunks = list(checked(read_shard(src, info, manifest, policy), manifest.num_classes, policy, where,
                          allow_empty=True))
    shard, stats = None, NoiseStats()
    if chunks:
        shard, stats = protect_chunk(method, concat(chunks), device, staging, index, keep_noise)
    result = UnitResult(index, shard, stats, policy.skipped, time.perf_counter() - t0)
    Ledger(staging).record(result)
    return result


@dataclass
class RegenJob:
    """What any worker needs to run units, as plain values: URIs are redacted (credentials come from each
    node's own environment, never from the driver)."""

    input_uri: str
    staging_uri: str
    method_uri: str
    s3_endpoint: str | None
    keep_noise: bool
    on_bad_record: str
    device: str = "cpu"
    s3_profile: str | None = None  # a profile name each node resolves itself; never a secret

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(self.s3_endpoint, self.s3_profile)

    def open(self) -> tuple[Location, Manifest, Location]:
        storage = self.storage
        src = open_location(self.input_uri, storage)
        return src, read_manifest(src), open_location(self.staging_uri, storage)


def pending_units(manifest: Manifest, done: dict[int, UnitResult]) -> list[int]:
    return [i for i in range(len(manifest.shards)) if i not in done]


def regenerate_local(method: NoiseMethod, inp: Input, staging: Location, done: dict[int, UnitResult],
                     device: torch.device, keep_noise: bool, on_bad_record: str,
                     shard_rows: int | None) -> Iterator[UnitResult]:
    """Every unit not in ``done``, in this process, in order (finished ones are yielded from the ledger)."""
    with bar(inp.info.count, f"{method.cfg.method}: protect (Alg. 4)", unit="img") as pb:
        for result in _units(method, inp, staging, done, device, keep_noise, on_bad_record, shard_rows):
            pb.update(result.rows)
            yield result


def _units(method, inp, staging, done, device, keep_noise, on_bad_record, shard_rows) -> Iterator[UnitResult]:
    if inp.canonical and shard_rows is None:
        src, manifest = inp.split.location, inp.info.manifest
        for i in range(len(manifest.shards)):
            yield done.get(i) or protect_input_shard(method, device, src, manifest, i, staging, keep_noise,
                                                     on_bad_record)
        return
    policy = BadRecordPolicy(on_bad_record)
    chunks = iter(shards_of(inp.split, policy, shard_rows))
    chunk, index, seen = next(chunks, None), 0, 0
    while chunk is not None:
        following = next(chunks, None)  # read ahead, so bad records after the last full unit are counted
        skipped, seen = policy.skipped[seen:], len(policy.skipped)
        if index in done:
            yield done[index]
        else:
            t0 = time.perf_counter()
            info, stats = protect_chunk(method, chunk, device, staging, index, keep_noise)
            result = UnitResult(index, info, stats, skipped, time.perf_counter() - t0)
            Ledger(staging).record(result)
            yield result
        chunk, index = following, index + 1
