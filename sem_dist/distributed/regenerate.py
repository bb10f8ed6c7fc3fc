"""Algorithm 4 on Ray Data: the regenerate stage's units (one output shard each, see
:mod:`sem_dist.stages.regenerate`) flow through ``map_batches`` into a pool of actors; each actor loads the
frozen method ONCE from its checkpoint URI and runs :func:`~sem_dist.stages.regenerate.protect_input_shard`
— read (sha256-checked), decode, perturb, encode, write to the staging area, record in the ledger — so the
bytes equal the in-process engine's for the same seed, and a killed run resumes from the ledger.

The driver holds metadata only: the pending unit numbers go in, one small result row per finished unit
comes back. Pixels, noise and tensors exist only inside the actors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..data.records import BadRecord
from ..data.storage import DataError
from ..device import resolve_device
from ..perturb.methods import method_from_state
from ..stages.fit import read_checkpoint
from ..stages.regenerate import RegenJob, UnitResult, protect_input_shard


@dataclass
class RayRegenOptions:
    actors: int = 2  # size of the actor pool (each holds one copy of the generator)
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    address: str | None = None  # Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)
    progress: bool = True  # Ray Data's progress bars
    resource_timeout_s: float = 600.0  # how long a real cluster's autoscaler gets to add the actors' resources


class UnitRegenerator:
    """The ``map_batches`` callable class: one per actor, the method loaded once in ``__init__``."""

    def __init__(self, job: dict):
        self.job = RegenJob(**job)
        self.device = resolve_device(self.job.device)
        state, _ = read_checkpoint(self.job.method_uri, self.job.storage)
        self.method = method_from_state(state, self.device)
        self.src, self.manifest, self.staging = self.job.open()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results, errors, bad = [], [], []
        for index in batch["index"]:
            try:
                r = protect_input_shard(self.method, self.device, self.src, self.manifest, int(index), self.staging,
                                        self.job.keep_noise, self.job.on_bad_record)
                results.append(r.to_json())
                errors.append("")
                bad.append(False)
            except DataError as exc:  # bad input: the driver reports it as the one-line error
                results.append("")
                errors.append(str(exc))
                bad.append(isinstance(exc, BadRecord))
        return {"result": results, "error": errors, "bad_record": bad}


def regenerate_ray(job: RegenJob, pending: list[int], opts: RayRegenOptions) -> Iterator[UnitResult]:
    """Run the ``pending`` units on a pool of ``opts.actors`` actors; yields each result as it finishes."""
    import ray
    import ray.data

    from .cluster import connect
    from .resources import wait_for_resources

    if not pending:
        return
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
        UnitRegenerator, fn_constructor_kwargs={"job": dataclasses.asdict(job)},
        # a unit is a whole shard of work: one at a time per actor keeps the pool evenly loaded
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors, max_tasks_in_flight_per_actor=1),
        batch_size=1, num_cpus=opts.cpus_per_actor, num_gpus=gpus if gpus > 0 else None)
    rows = iter(out.iter_rows())
    try:
        for row in rows:
            if row["error"]:
                raise (BadRecord if row["bad_record"] else DataError)(row["error"])
            yield UnitResult.from_json(row["result"])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stops the pipeline and its actors before the caller cleans up
            close()
