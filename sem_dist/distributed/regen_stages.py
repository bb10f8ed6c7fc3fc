"""Algorithm 4 on Ray Data, as Ray's batch-inference pattern: three ``map_batches`` stages, each with its own
workers, so the model stage only ever computes while CPU stages fetch, decode and encode around it::

    pending unit numbers ─▶ read  (CPU actors: fetch, decode, resize, check, cut into output shards)
                         ─▶ noise (the model: K actors holding the frozen method, num_gpus/num_cpus each)
                         ─▶ write (CPU actors: apply the noise, encode PNG, PUT at the shard's final key)
                         ─▶ driver (one small row per shard)

One row flows per output shard of a unit — the shards, names and rows of the in-process engine
(:class:`~sem_dist.engine.local.UnitInput`) — plus one *end* row per unit with its shard count, its
skipped records, or the error that stopped it. The noise stage solves each shard with the function the
in-process engine uses (``perturb.algorithm4.chunk_noise``: batches formed inside the shard; a sample's noise
depends on (seed, id)), so the bytes are the same for the same seed. Each noise actor has two shards in flight:
the next one is already local when it returns the last, so it never waits on storage.

The driver holds metadata only: unit numbers go in, one small row per written shard comes back; once all of
a unit's shards are back it writes the unit's ledger entry (``--resume`` redoes units without one). Rows
carry when each stage worked on them, from which :class:`RayRegenStats` reports every stage's busy share.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ..data.canonical import ShardInfo, write_shard
from ..data.records import BadRecord, BadRecordPolicy, Chunk
from ..data.storage import DataError, open_location
from ..engine.spec import EngineSpec
from ..engine.units import RegenJob, UnitInput, shard_id_hash

# torch is imported only where the model runs (NoiseStage) and in the driver: the read and write actors
# import this module without it

if TYPE_CHECKING:
    import ray.data

    from ..engine.ledger import UnitResult

STAGES = ("read", "noise", "write")
IO_CPUS = 1.0  # per read or write actor: one process decoding or encoding PNG on one core


def io_pool(model_cpus: float) -> tuple["ray.data.ActorPoolStrategy", float]:
    """The read and write stages' pool and the CPUs each of their actors reserves: one, growing onto the CPUs
    the model actors leave, when the cluster has two beyond theirs; otherwise (a small CPU-only cluster the
    model actors fill) one reader and one writer that reserve none and share the model actors' cores."""
    import ray

    if ray.cluster_resources().get("CPU", 0.0) - model_cpus >= 2 * IO_CPUS:
        return ray.data.ActorPoolStrategy(min_size=1), IO_CPUS
    return ray.data.ActorPoolStrategy(size=1), 0.0


# ---- rows: one per output shard of a unit, plus the unit's end row (part = -1) -------------------------

def _row(unit: int, part: int, name: str = "", chunk: Chunk | None = None, **more) -> dict[str, list]:
    """A one-row batch. Every row has every column, so Ray Data's blocks share one schema."""
    ids = list(chunk.ids) if chunk is not None else []
    shape = list(chunk.images.shape[1:]) if chunk is not None else []
    row = {"unit": unit, "part": part, "parts": -1, "name": name, "ids": json.dumps(ids),
           "shape": json.dumps(shape), "images": chunk.images.tobytes() if chunk is not None else b"",
           "labels": chunk.labels.astype(np.int64).tobytes() if chunk is not None else b"",
           "skipped": "[]", "error": "", "bad_record": False, "read": [0.0, 0.0], "noise": b"", "noise_stats": "{}",
           "noise_at": [0.0, 0.0], "actor_ready": 0.0, **more}
    return {k: [v] for k, v in row.items()}


def _one(batch: dict) -> dict:
    return {k: v[0] for k, v in batch.items()}


def _chunk(row: dict) -> Chunk:
    ids = json.loads(row["ids"])
    images = np.frombuffer(row["images"], np.uint8).reshape(len(ids), *json.loads(row["shape"])).copy()
    return Chunk(ids, images, np.frombuffer(row["labels"], np.int64).copy(), str(row["name"]))


class ReadStage:
    """CPU stage: a unit number → its output shards, decoded and checked, then the unit's end row."""

    def __init__(self, job: RegenJob):
        self.job, self.input = job, UnitInput(job)

    def __call__(self, batch: dict) -> Iterator[dict]:
        index = int(batch["unit"][0])
        policy = BadRecordPolicy(self.job.on_bad_record)
        part, t0 = 0, time.time()
        try:
            for name, chunk in self.input.parts(index, policy):
                yield _row(index, part, name, chunk, read=[t0, time.time()])
                part, t0 = part + 1, time.time()
            yield _row(index, -1, parts=part, skipped=json.dumps(policy.skipped), read=[t0, time.time()])
        except DataError as exc:  # bad input: the driver raises it as the one-line error
            yield _row(index, -1, error=str(exc), bad_record=isinstance(exc, BadRecord))


class NoiseStage:
    """The model stage: one actor per copy of the frozen method, loaded once in ``__init__``; a shard's rows in,
    the same row with its images protected (and its int8 noise for ``--keep-noise``) out. No storage is
    touched here."""

    def __init__(self, job: RegenJob, threads: int):
        import torch

        from ..engine.checkpoint import read_checkpoint
        from ..perturb.methods import method_from_state
        from ..runtime.device import resolve_device

        torch.set_num_threads(threads)  # Ray's default for an actor is 1 thread, whatever its CPUs
        self.job, self.device = job, resolve_device(job.device)
        state, _ = read_checkpoint(job.method_uri, job.storage)
        self.method = method_from_state(state, self.device)
        self.ready = time.time()  # the pool's start-up ends when its first actor gets here

    def __call__(self, batch: dict) -> dict:
        from ..perturb.algorithm4 import chunk_noise, protected

        row, t0 = _one(batch), time.time()
        if row["part"] < 0:
            return {**batch, "noise_at": [[t0, time.time()]], "actor_ready": [self.ready]}
        chunk = _chunk(row)
        images, stored, stats = protected(chunk, chunk_noise(self.method, chunk, self.device), self.job.keep_noise)
        return {**batch, "images": [images.tobytes()], "noise": [b"" if stored is None else stored.tobytes()],
                "noise_stats": [json.dumps(dataclasses.asdict(stats))], "noise_at": [[t0, time.time()]],
                "actor_ready": [self.ready]}


class WriteStage:
    """CPU stage: the protected shard (or, converting, the shard as read) PNG-encoded and written at its final
    key; only a small row goes on."""

    def __init__(self, job: RegenJob):
        self.job, self.out = job, open_location(job.out_uri, job.storage)

    def __call__(self, batch: dict) -> dict:
        row, t0 = _one(batch), time.time()
        done = {"info": "", "id_hash": ""}
        if row["part"] >= 0:
            chunk = _chunk(row)
            noise = np.frombuffer(row["noise"], np.int8).reshape(chunk.images.shape) if row["noise"] else None
            try:
                info = write_shard(self.out, str(row["name"]), chunk.ids, chunk.images, chunk.labels, noise)
                done = {"info": json.dumps(dataclasses.asdict(info)), "id_hash": shard_id_hash(self.job, chunk) or ""}
            except DataError as exc:
                row["error"] = str(exc)
        keep = ("unit", "part", "parts", "skipped", "error", "bad_record", "read", "noise_stats", "noise_at",
                "actor_ready")
        return {**{k: [row[k]] for k in keep}, **{k: [v] for k, v in done.items()},
                "write_at": [[t0, time.time()]]}


# ---- the driver ------------------------------------------------------------------------------------------

@dataclass
class RayRegenStats:
    """What the stages did. The stage's wall time splits into the pool's start-up and the work after it;
    each stage's busy share is the time its workers spent on shards over (its wall time × its workers)."""

    started: float = 0.0  # wall clock when the driver launched the pipeline
    ready: float = 0.0  # when the first noise actor was ready
    finished: float = 0.0
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {s: [] for s in STAGES})

    @property
    def startup_s(self) -> float:
        return max(0.0, self.ready - self.started)

    @property
    def work_s(self) -> float:
        return max(0.0, self.finished - self.ready)

    def add(self, row: dict) -> None:
        for stage, key in zip(STAGES, ("read", "noise_at", "write_at")):
            t0, t1 = (float(t) for t in row[key])
            if t1 > 0 and (stage == "read" or row["part"] >= 0):
                self.spans[stage].append((t0, t1))
        if row["actor_ready"] > 0:
            self.ready = min(self.ready or row["actor_ready"], row["actor_ready"])

    def stages(self) -> dict[str, dict]:
        """Per stage: ``busy_s`` (summed over workers), ``wall_s`` (first start to last end), ``workers`` (most
        at work at once) and ``busy_share`` = busy_s / (wall_s × workers)."""
        report = {}
        for stage, spans in self.spans.items():
            if not spans:
                continue
            busy = sum(t1 - t0 for t0, t1 in spans)
            wall = max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)
            workers = _most_at_once(spans)
            report[stage] = {"busy_s": busy, "wall_s": wall, "workers": workers,
                             "busy_share": busy / (wall * workers) if wall > 0 else 1.0}
        return report


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


class _Units:
    """Shard rows of units coming back in any order; a unit is complete once its end row and all its shards
    are back."""

    def __init__(self):
        self.rows: dict[int, dict[int, dict]] = {}
        self.ends: dict[int, dict] = {}

    def add(self, row: dict) -> "UnitResult | None":
        from ..engine.ledger import UnitResult
        from ..perturb.algorithm4 import NoiseStats

        unit = int(row["unit"])
        if row["error"]:
            raise (BadRecord if row["bad_record"] else DataError)(row["error"])
        if row["part"] < 0:
            self.ends[unit] = row
        else:
            self.rows.setdefault(unit, {})[int(row["part"])] = row
        end, parts = self.ends.get(unit), self.rows.get(unit, {})
        if end is None or len(parts) < end["parts"]:
            return None
        result = UnitResult(unit, skipped=json.loads(end["skipped"]))
        for k in range(int(end["parts"])):
            r = parts[k]
            result.add(ShardInfo(**json.loads(r["info"])), NoiseStats(**json.loads(r["noise_stats"])),
                       r["id_hash"] or None)
            result.seconds += sum(float(r[key][1]) - float(r[key][0]) for key in ("read", "noise_at", "write_at"))
        del self.ends[unit]
        self.rows.pop(unit, None)
        return result


def model_actors(engine: EngineSpec, pending: list[int]) -> int:
    """The noise stage's actors for ``pending`` units: ``engine.actors``, never more than there are units."""
    return max(1, min(engine.actors or 1, len(pending)))


def run_units(job: RegenJob, pending: list[int], engine: EngineSpec, progress: bool,
              stats: RayRegenStats | None = None) -> Iterator["UnitResult"]:
    """Run the ``pending`` units through the stages (read → noise → write; read → write for a conversion,
    ``job.method_uri`` empty) with ``engine.actors`` model actors (Ray Data's own progress bars with
    ``progress``); yields each unit's result, its ledger entry written, once all its shards are."""
    import ray
    import ray.data

    from ..engine.ledger import Ledger
    from .cluster import connect
    from .resources import wait_for_resources

    if not pending:
        return
    stats = stats or RayRegenStats()
    connect(engine.address)
    cpus, gpus = engine.cpus_per_worker, engine.gpus_per_worker
    actors = model_actors(engine, pending) if job.method_uri else 0
    if actors:
        wait_for_resources(actors * cpus, actors * gpus, f"{actors} regeneration actor(s)", engine.resource_timeout_s,
                           units=actors)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    job = dataclasses.replace(job, device="cuda" if gpus > 0 else "cpu")
    pool, io_cpus = io_pool(actors * cpus)
    out = (ray.data.from_items([{"unit": i} for i in pending], override_num_blocks=len(pending))
           .map_batches(ReadStage, fn_constructor_kwargs={"job": job}, compute=pool, batch_size=1,
                        num_cpus=io_cpus))
    if actors:
        out = out.map_batches(NoiseStage, fn_constructor_kwargs={"job": job, "threads": max(1, int(cpus))},
                              compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2),
                              batch_size=1, num_cpus=cpus, num_gpus=gpus if gpus > 0 else None)
    out = out.map_batches(WriteStage, fn_constructor_kwargs={"job": job}, compute=pool, batch_size=1,
                          num_cpus=io_cpus)
    ledger, units = Ledger(open_location(job.staging_uri, job.storage)), _Units()
    stats.started = time.time()
    rows = iter(out.iter_rows())
    try:
        for row in rows:
            result = units.add(row)
            stats.add(row)
            if result is not None:
                ledger.record(result)
                yield result
        stats.finished = time.time()
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stops the pipeline and its actors before the caller cleans up
            close()
