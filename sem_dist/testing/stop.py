"""A test-only hook to interrupt a run at an exact moment, without timing races.

``SEM_DIST_STOP_AT=POINT[:N]`` makes the process SIGKILL itself the N-th time (default: the first) it reaches
``stop_point(POINT)``. Unset, a point costs one environment lookup. Points:

- ``unit``: a unit's shards are at their final keys and its ledger entry is written (by the driver, in process
  and on Ray Data; for the in-process convert a unit is one output shard);
- ``before-manifest``: every unit is done, the manifest is about to be written;
- ``after-manifest``: the manifest is written, the run's ``_staging`` area and stale shards not yet removed.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

VARIABLE = "SEM_DIST_STOP_AT"
_reached: Counter = Counter()


def stop_point(name: str) -> None:
    want = os.environ.get(VARIABLE)
    if not want:
        return
    point, _, nth = want.partition(":")
    if point == name:
        _reached[name] += 1
        if _reached[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
