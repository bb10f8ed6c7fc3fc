"""Commit stage: the finished units become the output's manifest, written last (see ``DatasetWriter``).

Before that, nothing under OUT but the staging area exists, so an interrupted run never looks complete.
"""
from __future__ import annotations

import sys

from ..data.canonical import DatasetWriter, Manifest, ShardInfo, read_manifest, shard_name
from ..data.info import DatasetInfo
from ..data.storage import DataError, Location
from ..data.unique import hashes_from_text, refuse_repeated_ids
from ..pipeline import NoiseStats
from .regenerate import UnitResult


def commit(writer: DatasetWriter, info: DatasetInfo, results: list[UnitResult], protection: dict,
           noise_column: bool) -> Manifest:
    results = sorted(results, key=lambda r: r.index)
    staged = [s for r in results for s in r.shards]
    skipped = [s for r in results for s in r.skipped]
    if not staged:
        raise DataError(f"{info.source.get('uri')}: the dataset is empty after skipping {len(skipped)} bad records")
    totals = NoiseStats()
    for r in results:
        totals = totals.merge(r.noise)
    # staged shards are named by unit; the output's are part-NNNNN in unit order
    shards = [ShardInfo(shard_name(i), s.rows, s.sha256, s.bytes) for i, s in enumerate(staged)]
    manifest = Manifest(count=sum(s.rows for s in shards), channels=info.channels, height=info.height,
                        width=info.width, classes=list(info.classes), shards=shards, source=info.source,
                        skipped=skipped, protection={**protection, "noise": totals.result()},
                        noise_column=noise_column)
    names = {s.name: t.name for s, t in zip(shards, staged)}
    hashes = [h for r in results for h in r.id_hashes]
    if hashes:  # plan units: ids no manifest vouches for, written by separate workers
        try:
            refuse_repeated_ids(writer.staging, manifest, names, [hashes_from_text(h) for h in hashes])
        except DataError:
            writer.abandon()  # a rerun would meet the same input: nothing of this one is kept
            raise
    writer.commit(manifest, names)
    return manifest


def already_done(out: Location, fingerprint: str) -> Manifest:
    """``--resume`` on a committed output: its manifest, if the same settings and input made it."""
    existing = read_manifest(out)
    if (existing.protection or {}).get("fingerprint") != fingerprint:
        raise DataError(f"--out {out.display} already holds a complete dataset made with other settings or input; "
                        "pass --overwrite to replace it")
    print(f"{out.display}: already complete (same settings); nothing to do", file=sys.stderr)
    return existing
