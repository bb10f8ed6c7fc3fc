"""Commit stage: the finished units become the output's manifest, written last (see ``DatasetWriter``).

Before that, nothing under OUT but the staging area exists, so an interrupted run never looks complete.
"""
from __future__ import annotations

import sys

from ..data.canonical import DatasetWriter, Manifest, read_manifest
from ..data.info import DatasetInfo
from ..data.storage import DataError, Location
from ..pipeline import NoiseStats
from .regenerate import UnitResult


def commit(writer: DatasetWriter, info: DatasetInfo, results: list[UnitResult], protection: dict,
           noise_column: bool) -> Manifest:
    results = sorted(results, key=lambda r: r.index)
    shards = [r.shard for r in results if r.shard is not None]
    skipped = [s for r in results for s in r.skipped]
    if not shards:
        raise DataError(f"{info.source.get('uri')}: the dataset is empty after skipping {len(skipped)} bad records")
    totals = NoiseStats()
    for r in results:
        totals = totals.merge(r.noise)
    manifest = Manifest(count=sum(s.rows for s in shards), channels=info.channels, height=info.height,
                        width=info.width, classes=list(info.classes), shards=shards, source=info.source,
                        skipped=skipped, protection={**protection, "noise": totals.result()},
                        noise_column=noise_column)
    writer.commit(manifest)
    return manifest


def already_done(out: Location, fingerprint: str) -> Manifest:
    """``--resume`` on a committed output: its manifest, if the same settings and input made it."""
    existing = read_manifest(out)
    if (existing.protection or {}).get("fingerprint") != fingerprint:
        raise DataError(f"--out {out.display} already holds a complete dataset made with other settings or input; "
                        "pass --overwrite to replace it")
    print(f"{out.display}: already complete (same settings); nothing to do", file=sys.stderr)
    return existing
