"""``protect`` as four stages, each one small module taking the engine it runs on
(:class:`sem_dist.engine.base.Engine`: in this process, or on Ray from :mod:`sem_dist.distributed.engine`):

read (:mod:`.read`) → fit, Algorithm 1 (:mod:`.fit`) → regenerate, Algorithm 4 (:mod:`.regenerate`)
→ commit (:mod:`.commit`). :mod:`.run` composes them and is the one place that chooses the engines; the
output's storage is reached only through :class:`.output.Output`. The Python API:
``sem_dist.protect.run.protect(RunSpec(...))`` and ``regenerate_dataset`` (docs/architecture.md).
"""
