"""Regenerate stage (Algorithm 4): the fitted method's noise for every sample, written as protected shards
at their final keys in the output folder, one *unit* at a time (the manifest, written last by the commit
stage, is what makes them a dataset; see ``data.canonical.DatasetWriter``).

Units are what the input already divides into, so any worker can run any unit knowing only the job:
- a canonical input (no ``--shard-rows``): unit i is input shard i — read whole, checked against the
  manifest's sha256, decoded, its records checked, perturbed and written as one output shard;
- a file-backed source (``imagefolder:``, ``parquet:``, ``webdataset:``): unit i is the plan's unit i (a
  class folder, a Parquet file or a run of its row groups, a tar shard) — listed, fetched, decoded and
  resized to the working size in batches, cut into output shards of ``--shard-rows`` rows (default: ~64 MiB
  of pixels), each perturbed and written as soon as it is full, so memory holds one output shard, not the unit.
A unit's work is three steps — :class:`UnitInput` (read into output shards), :func:`solve_noise` (the model),
:func:`write_part` (encode, write) — which :class:`UnitRunner` runs in sequence in this process
(:func:`regenerate_local`) and ``sem_dist.distributed.regen_stages`` runs as three Ray Data stages, so both
engines write the same bytes for the same seed (noise depends on (seed, id); block methods such as NTGA on
blocks formed inside an output shard).
Other sources (bundled and MNIST/CIFAR files), and canonical inputs re-cut by ``--shard-rows``, run in this
process over the record stream cut into ``--shard-rows`` units.

The ledger (``data.ledger``): after a unit's shards are written, one small object in ``_staging/done/`` records
it (shard infos, noise totals, skipped records, and for plan units 8-byte hashes of its ids, so the commit
can refuse an id repeated across files without anyone holding the ids). Finishing a unit costs O(1)
storage writes, and ``--resume`` lists ``done/`` and redoes only units without an entry (a unit written
but not recorded is simply rewritten: the same bytes). ``_staging/run.json`` ties the staging area to the
run's fingerprint. Shards are named by unit: ``part-NNNNN`` for unit N of a canonical input or of a re-cut
stream, ``part-NNNNN-KKKKK`` for output shard K of plan unit N, so no name depends on another unit.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.arrays import ArrayDataset
from ..data.canonical import ShardInfo, shard_name, write_shard
from ..data.convert import shards_of
from ..data.ledger import Ledger as RunLedger
from ..data.records import BadRecordPolicy, Chunk
from ..data.storage import Location, open_location
from ..perturb.methods import NoiseMethod
from ..perturb.algorithm4 import apply_noise, regenerate
from ..perturb.algorithm4 import NoiseStats
from ..runtime.progress import bar
from .read import Input
from .units import RegenJob, UnitInput, shard_id_hash


@dataclass
class UnitResult:
    """One finished unit, as its ledger entry records it."""

    index: int
    shards: list[ShardInfo] = field(default_factory=list)  # in order; none if every record was skipped
    noise: NoiseStats = field(default_factory=NoiseStats)
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    id_hashes: list[str] = field(default_factory=list)  # per shard, for plan units (see the module docstring)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def add(self, info: ShardInfo, noise: NoiseStats, id_hash: str | None) -> None:
        """One more output shard, in order (``id_hash``: its ids' hashes, for plan units)."""
        self.shards.append(info)
        self.noise = self.noise.merge(noise)
        if id_hash is not None:
            self.id_hashes.append(id_hash)

    @classmethod
    def from_dict(cls, raw: dict) -> "UnitResult":
        return cls(raw["index"], [ShardInfo(**s) for s in raw["shards"]], NoiseStats(**raw["noise"]),
                   raw["skipped"], raw["seconds"], raw["id_hashes"])


class Ledger(RunLedger):
    """The run's ledger (``data.ledger``) with :class:`UnitResult` entries."""

    def finished(self) -> dict[int, UnitResult]:
        return {i: UnitResult.from_dict(e) for i, e in self.entries().items()}

    def record(self, result: UnitResult) -> None:
        super().record(dataclasses.asdict(result))


def solve_noise(method: NoiseMethod, chunk: Chunk, device: torch.device) -> np.ndarray:
    """Algorithm 4 over one output shard's records: int8 noise, solved in ``regen_batch_size`` batches formed
    inside the shard (both engines form them alike, so block methods such as NTGA get the same blocks)."""
    noise = np.empty(chunk.images.shape, dtype=np.int8)
    pos = 0
    batches = ArrayDataset(chunk.ids, chunk.images, chunk.labels, []).iter_batches(method.regen_batch_size())
    for ids, part in regenerate(method, batches, device):
        noise[pos:pos + len(ids)] = part
        pos += len(ids)
    return noise


def protected(chunk: Chunk, noise: np.ndarray, keep_noise: bool) -> tuple[np.ndarray, np.ndarray | None, NoiseStats]:
    """A shard's protected images, the noise column to store (``--keep-noise``) and its noise totals."""
    return apply_noise(chunk.images, noise), noise if keep_noise else None, NoiseStats().update(noise)


def write_part(out: Location, name: str, chunk: Chunk, noise: np.ndarray, keep_noise: bool
               ) -> tuple[ShardInfo, NoiseStats]:
    """One output shard's protected images (and noise) encoded and written to ``out/name``."""
    images, stored, stats = protected(chunk, noise, keep_noise)
    return write_shard(out, name, chunk.ids, images, chunk.labels, stored), stats


def protect_chunk(method: NoiseMethod, chunk: Chunk, device: torch.device, out: Location, name: str,
                  keep_noise: bool) -> tuple[ShardInfo, NoiseStats]:
    """Algorithm 4 over one shard's records, then its protected images (and noise) to ``out/name``."""
    return write_part(out, name, chunk, solve_noise(method, chunk, device), keep_noise)


class UnitRunner:
    """Runs whole units of one job in this process: read, perturb, write, record in the ledger."""

    def __init__(self, job: RegenJob, method: NoiseMethod, device: torch.device):
        self.job, self.method, self.device = job, method, device
        self.input = UnitInput(job)
        self.out = open_location(job.out_uri, job.storage)
        self.staging = open_location(job.staging_uri, job.storage)

    def __call__(self, index: int) -> UnitResult:
        t0 = time.perf_counter()
        policy = BadRecordPolicy(self.job.on_bad_record)
        result = UnitResult(index)
        for name, part in self.input.parts(index, policy):
            info, stats = protect_chunk(self.method, part, self.device, self.out, name, self.job.keep_noise)
            result.add(info, stats, shard_id_hash(self.job, part))
        result.skipped, result.seconds = policy.skipped, time.perf_counter() - t0
        Ledger(self.staging).record(result)
        return result


def unit_count(inp: Input, shard_rows: int | None) -> int | None:
    """How many units regeneration runs over (one Ray task each), or None when the record stream is re-cut
    into ``shard_rows`` units in this process instead."""
    if inp.plan is not None:
        return len(inp.plan.units)
    if inp.canonical and shard_rows is None:
        return len(inp.info.manifest.shards)
    return None


def pending_units(count: int, done: dict[int, UnitResult]) -> list[int]:
    return [i for i in range(count) if i not in done]


def regenerate_local(method: NoiseMethod, inp: Input, job: RegenJob, done: dict[int, UnitResult],
                     device: torch.device) -> Iterator[UnitResult]:
    """Every unit not in ``done``, in this process, in order (finished ones are yielded from the ledger)."""
    count = unit_count(inp, job.shard_rows)
    if count is None:
        results = _recut_units(method, inp, job, done, device)
    else:
        runner = UnitRunner(job, method, device)
        results = (done.get(i) or runner(i) for i in range(count))
    with bar(inp.info.count, f"{method.cfg.method}: protect (Alg. 4)", unit="img") as pb:
        for result in results:
            pb.update(result.rows)
            yield result


def _recut_units(method, inp, job, done, device) -> Iterable[UnitResult]:
    out, staging = open_location(job.out_uri, job.storage), open_location(job.staging_uri, job.storage)
    policy = BadRecordPolicy(job.on_bad_record)
    chunks = iter(shards_of(inp.split, policy, job.shard_rows))
    chunk, index, seen = next(chunks, None), 0, 0
    while chunk is not None:
        following = next(chunks, None)  # read ahead, so bad records after the last full unit are counted
        skipped, seen = policy.skipped[seen:], len(policy.skipped)
        if index in done:
            yield done[index]
        else:
            t0 = time.perf_counter()
            info, stats = protect_chunk(method, chunk, device, out, shard_name(index), job.keep_noise)
            result = UnitResult(index, [info], stats, skipped, time.perf_counter() - t0)
            Ledger(staging).record(result)
            yield result
        chunk, index = following, index + 1
