"""Algorithm 4 on Ray Data: the regenerate stage's units (see :mod:`sem_dist.stages.regenerate`: a canonical
input's shards, or the class folders / Parquet files / tar shards of a file-backed source) flow through
``map_batches`` into a pool of actors; each actor loads the frozen method ONCE from its checkpoint URI and
runs :class:`~sem_dist.stages.regenerate.UnitRunner` — read, decode (and resize), perturb, encode, write
the shards at their final keys, record in the ledger — so the bytes equal the in-process engine's for the same seed, and
a killed run resumes from the ledger.

The driver holds metadata only: the pending unit numbers go in, one small result row per finished unit
comes back. Pixels, noise and tensors exist only inside the actors. Each actor's torch uses as many threads
as the CPUs Ray gave it (Ray's default for an actor of 1 CPU is 1 thread; more CPUs need saying).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..data.records import BadRecord
from ..data.storage import DataError
from ..device import resolve_device
from ..perturb.methods import method_from_state
from ..stages.fit import read_checkpoint
from ..stages.regenerate import RegenJob, UnitResult, UnitRunner
from .resources import DEFAULT_RESOURCE_TIMEOUT_S


@dataclass
class RayRegenOptions:
    actors: int = 2  # size of the actor pool (each holds one copy of the generator)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)
    progress: bool = True  # Ray Data's progress bars
    resource_timeout_s: float = DEFAULT_RESOURCE_TIMEOUT_S  # how long an autoscaler gets to add the actors


class UnitRegenerator:
    """The ``map_batches`` callable class: one per actor, the method loaded once in ``__init__``."""

    def __init__(self, job: RegenJob, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.job = job
        device = resolve_device(job.device)
        state, _ = read_checkpoint(job.method_uri, job.storage)
        self.run = UnitRunner(job, method_from_state(state, device), device)
        self.started = time.time()  # when this actor became ready (the pool's start-up ends here)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results, errors, bad, ready = [], [], [], []
        for index in batch["index"]:
            try:
                results.append(self.run(int(index)).to_json())
                errors.append("")
                bad.append(False)
            except DataError as exc:  # bad input: the driver reports it as the one-line error
                results.append("")
                errors.append(str(exc))
                bad.append(isinstance(exc, BadRecord))
            ready.append(self.started)
        return {"result": results, "error": errors, "bad_record": bad, "actor_ready": ready}


@dataclass
class RayRegenStats:
    """What the pool did: the stage's wall time splits into the pool's start-up and the work after it."""

    started: float = 0.0  # wall clock when the driver launched the pool
    ready: float = 0.0  # when the first actor was ready
    finished: float = 0.0

    @property
    def startup_s(self) -> float:
        return max(0.0, self.ready - self.started)

    @property
    def work_s(self) -> float:
        return max(0.0, self.finished - self.ready)


def regenerate_ray(job: RegenJob, pending: list[int], opts: RayRegenOptions,
                   stats: RayRegenStats | None = None) -> Iterator[UnitResult]:
    """Run the ``pending`` units on a pool of ``opts.actors`` actors; yields each result as it finishes."""
    import ray
    import ray.data

    from .cluster import connect
    from .resources import wait_for_resources

    if not pending:
        return
    stats = stats or RayRegenStats()
    connect(opts.address)
    gpus = opts.gpus_per_actor
    actors = max(1, min(opts.actors, len(pending)))
    wait_for_resources(actors * opts.cpus_per_actor, actors * gpus, f"{actors} regeneration actor(s)",
                       opts.resource_timeout_s, units=actors)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = opts.progress
    job = dataclasses.replace(job, device="cuda" if gpus > 0 else "cpu")
    units = ray.data.from_items([{"index": i} for i in pending], override_num_blocks=len(pending))
    out = units.map_batches(
        UnitRegenerator, fn_constructor_kwargs={"job": job, "threads": max(1, int(opts.cpus_per_actor))},
        # a unit is a whole shard of work: one at a time per actor keeps the pool evenly loaded
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors, max_tasks_in_flight_per_actor=1),
        batch_size=1, num_cpus=opts.cpus_per_actor, num_gpus=gpus if gpus > 0 else None)
    stats.started = time.time()
    rows = iter(out.iter_rows())
    try:
        for row in rows:
            if row["error"]:
                raise (BadRecord if row["bad_record"] else DataError)(row["error"])
            stats.ready = min(stats.ready or row["actor_ready"], row["actor_ready"])
            yield UnitResult.from_json(row["result"])
        stats.finished = time.time()
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stops the pipeline and its actors before the caller cleans up
            close()
