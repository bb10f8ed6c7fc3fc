"""A run's ledger in its output's ``_staging`` area, so a killed run resumes without redoing finished work:
``run.json`` ties the area to the run's fingerprint (and the input's per-file identity, to name a changed
file), and one small object ``done/part-NNNNN.json`` per finished unit holds what the commit needs of it.

Finishing a unit costs one write, whatever came before; ``--resume`` lists ``done/`` and redoes only the
units without an entry (a unit written but not recorded is written again: the same bytes). Used by
``protect``/``regenerate`` (units of Algorithm 4) and ``convert`` (output shards, or plan units on Ray).
"""
from __future__ import annotations

import json

from ..testing.stop import stop_point
from .canonical import shard_name
from .storage import DataError, Location

LEDGER = "done"
RUN_RECORD = "run.json"


class Ledger:
    """Finished units of a run, one JSON object each under ``staging/done/``."""

    def __init__(self, staging: Location):
        self.staging, self.folder = staging, staging.child(LEDGER)

    def open(self, fingerprint: str, resume: bool, files: dict[str, list] | None = None, source: str = "") -> None:
        """Tie the (fresh or kept) staging area to ``fingerprint``; a resumed run must match it. ``files`` (the
        input's per-file identity, :func:`sem_dist.data.storage.file_identities`) is kept so that a changed
        input file can be named."""
        if resume and self.staging.exists(RUN_RECORD):
            before = json.loads(self.staging.read_bytes(RUN_RECORD))
            if before["fingerprint"] != fingerprint:
                old, changed = before.get("input_files"), None
                if old is not None and files is not None:
                    changed = next((f for f in sorted({*old, *files}) if old.get(f) != files.get(f)), None)
                if changed is not None:
                    raise DataError(f"{source}/{changed}: changed since the interrupted run (size, ETag or mtime "
                                    "differ); pass --overwrite to start over")
                raise DataError(f"{self.staging.display}: the interrupted run there used other settings or input; "
                                "pass --overwrite to start over")
            return
        record = {"fingerprint": fingerprint, "input_files": files}
        self.staging.write_bytes(RUN_RECORD, json.dumps(record).encode())

    def entries(self) -> dict[int, dict]:
        """Every finished unit's entry, by unit number."""
        done = {}
        for name in self.folder.names():
            if name.endswith(".json"):
                entry = json.loads(self.folder.read_bytes(name))
                done[entry["index"]] = entry
        return done

    def record(self, entry: dict) -> None:
        """Unit ``entry["index"]`` is finished (its shards are written)."""
        self.folder.write_bytes(f"{shard_name(entry['index'])}.json", json.dumps(entry, sort_keys=True).encode())
        stop_point("unit")
