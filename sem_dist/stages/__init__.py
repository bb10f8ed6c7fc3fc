"""``protect`` as four named stages, each one module with an in-process implementation here and a Ray
one in :mod:`sem_dist.distributed` behind the same interface:

read (:mod:`.read`) → fit, Algorithm 1 (:mod:`.fit`) → regenerate, Algorithm 4 (:mod:`.regenerate`)
→ commit (:mod:`.commit`). :mod:`sem_dist.protect_dataset` composes them.
"""
