"""The in-process engine (:class:`LocalEngine`), and Algorithm 4's units as every engine runs them: the fitted
method's noise for every sample, written as protected shards at their final keys in the output folder, one
*unit* at a time (the manifest, written last by the commit stage, is what makes them a dataset; see
``data.canonical.DatasetWriter``).

Units are what the input already divides into, so any worker can run any unit knowing only the job:
- a canonical input (no ``--shard-rows``): unit i is input shard i — read whole, checked against the
  manifest's sha256, decoded, its records checked, perturbed and written as one output shard;
- a file-backed source (``imagefolder:``, ``parquet:``, ``webdataset:``): unit i is the plan's unit i (a
  class folder, a Parquet file or a run of its row groups, a tar shard) — listed, fetched, decoded and
  resized to the working size in batches, cut into output shards of ``--shard-rows`` rows (default: ~64 MiB
  of pixels), each perturbed and written as soon as it is full, so memory holds one output shard, not the unit.
A unit's work is three steps — :class:`UnitInput` (read into output shards), ``perturb.algorithm4.chunk_noise``
(the model), ``data.canonical.write_shard`` (encode, write) — which :class:`UnitRunner` runs in sequence in this
process (:func:`regenerate_local`) and ``sem_dist.distributed.regen_stages`` runs as three Ray Data stages, so both
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

import time
from typing import Iterable, Iterator

import torch

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..data.canonical import ShardInfo, shard_name, write_shard
from ..data.convert import shards_of
from ..data.records import BadRecordPolicy, Chunk
from ..data.storage import Location, open_location
from ..perturb.algorithm4 import NoiseStats, chunk_noise, protected
from ..perturb.in_memory import fit_method
from ..perturb.methods import NoiseMethod, method_from_state
from ..runtime.device import resolve_device
from ..runtime.progress import bar
from .base import Fitted
from .input import Input
from .ledger import Ledger, UnitResult
from .spec import RunSpec
from .units import RegenJob, UnitInput, shard_id_hash, unit_count


def protect_chunk(method: NoiseMethod, chunk: Chunk, device: torch.device, out: Location, name: str,
                  keep_noise: bool) -> tuple[ShardInfo, NoiseStats]:
    """Algorithm 4 over one shard's records, then its protected images (and noise) encoded and written to
    ``out/name``."""
    images, stored, stats = protected(chunk, chunk_noise(method, chunk, device), keep_noise)
    return write_shard(out, name, chunk.ids, images, chunk.labels, stored), stats


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


class LocalEngine:
    """Both algorithms in this process: Algorithm 1 on the split in memory, Algorithm 4 unit after unit."""

    def fit(self, spec: RunSpec, cfg: ProtectConfig, data: ArrayDataset | Input, device: torch.device,
            checkpoint: str) -> tuple[NoiseMethod, dict]:
        if not isinstance(data, ArrayDataset):
            raise TypeError("the in-process engine fits on a split in memory, not a streamed one")
        return fit_method(cfg, data, device, checkpoint_dir=checkpoint, resume=spec.resume), {"workers": 1}

    def regenerate(self, spec: RunSpec, inp: Input, job: RegenJob, done: dict[int, UnitResult],
                   fitted: Fitted) -> tuple[list[UnitResult], dict]:
        device = resolve_device(spec.device_here)
        method = fitted.method or method_from_state(fitted.state, device)
        results = list(regenerate_local(method, inp, job, done, device))
        return results, {"engine": "in-process", "actors": 1, "gpus_per_actor": spec.engine.gpus_per_worker,
                         "cpus_per_actor": None}
