"""The Ray engine (:class:`~sem_dist.engine.base.Engine`): Algorithm 1 on Ray Train (``algorithm1``), fed from one
in-memory copy put in the object store or streamed from storage through Ray Data (``dataset.read_rows``), and
Algorithm 4 as three Ray Data stages (``regen_stages``). The stages of ``sem_dist.protect`` hand it their work;
it reads the run's spec whole and never imports them."""
from __future__ import annotations

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..engine.base import Fitted
from ..engine.input import Input
from ..engine.ledger import UnitResult
from ..engine.spec import RunSpec
from ..engine.units import RegenJob, pending_units, unit_count
from ..runtime.progress import bar, enabled
from .algorithm1 import RayTrainOptions, fit_method_distributed
from .cluster import connect
from .logs import native_stderr_to_log, progress_bars
from .regen_stages import RayRegenStats, model_actors, run_units


class RayEngine:
    def fit(self, spec: RunSpec, cfg: ProtectConfig, data: ArrayDataset | Input, device, checkpoint: str):
        opts = RayTrainOptions(engine=spec.engine, checkpoint=checkpoint, resume=spec.resume, storage=spec.storage,
                               on_bad_record=spec.on_bad_record, progress=enabled())
        if isinstance(data, ArrayDataset):
            return fit_method_distributed(cfg, data, device, opts)
        from .dataset import read_rows

        connect(spec.engine.address)  # before Ray Data's first call, which would otherwise start a default Ray itself
        # the split open_input chose (?split=, the only one, or train), not the spec's bare default
        ds, info = read_rows(data.spec, spec.storage, data.split.name or None)
        return fit_method_distributed(cfg, ds, device, opts, info=info)

    def regenerate(self, spec: RunSpec, inp: Input, job: RegenJob, done: dict[int, UnitResult],
                   fitted: Fitted) -> tuple[list[UnitResult], dict]:
        """The pool's start-up and the images/s of the work after it go in the manifest. The stage's one progress
        bar counts the images of finished units (Ray Data's own bars only with ``--verbose``, see ``logs``)."""
        engine, stats = spec.engine, RayRegenStats()
        pending = pending_units(unit_count(inp, spec.shard_rows), done)
        if pending:  # Ray's start-up lines come before the bar, not through it
            connect(engine.address)
        new, actors = [], model_actors(engine, pending)
        method = fitted.state["config"]["method"]
        with native_stderr_to_log(), bar(inp.info.count, f"{method}: protect (Alg. 4, Ray Data × {actors})",
                                         unit="img") as pb:
            pb.update(sum(r.rows for r in done.values()))
            for result in run_units(job, pending, engine, progress_bars(), stats):
                new.append(result)
                pb.update(result.rows)
        fields = {"engine": "ray-data", "actors": engine.actors, "gpus_per_actor": engine.gpus_per_worker,
                  "cpus_per_actor": engine.cpus_per_worker}
        if new:
            images = sum(r.rows for r in new)
            fields.update(pool_startup_s=stats.startup_s, stages=stats.stages(),
                          images_per_s_after_startup=images / stats.work_s if stats.work_s > 0 else None)
        return [*done.values(), *new], fields
