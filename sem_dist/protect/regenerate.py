"""Regenerate stage (Algorithm 4): every unit the ledger does not hold yet, on the engine the composer chose
(``engine.local`` in this process, ``distributed.engine`` on Ray Data); the same bytes either way. What
a unit is, and how it is written and recorded: ``sem_dist.engine.local``."""
from __future__ import annotations

import time

from ..data.records import BadRecord
from ..engine.base import Engine, Fitted
from ..engine.ledger import UnitResult
from .output import Output


def regenerate(output: Output, engine: Engine, fitted: Fitted) -> tuple[list[UnitResult], dict]:
    """Every unit's result and the manifest's ``regeneration`` record of this run's part of the work."""
    done = output.finished()
    t0 = time.perf_counter()
    try:
        results, fields = engine.regenerate(output.spec, output.inp, output.job(), done, fitted)
    except BadRecord:
        output.clear()  # nothing half-written under OUT; the input is never touched
        raise
    seconds = time.perf_counter() - t0
    images = sum(r.rows for r in results if r.index not in done)
    return results, {**fields, "images": images, "seconds": seconds,
                     "images_per_s": images / seconds if seconds > 0 else None}
