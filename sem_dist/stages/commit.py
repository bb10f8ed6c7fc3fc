"""Commit stage: the finished units' shards, already at their final keys, become a dataset when the manifest
is written, last and atomically (see ``DatasetWriter``). Until then the folder has no manifest and every
reader refuses it as incomplete; a kill at any point leaves something ``--resume`` finishes.
"""
from __future__ import annotations

import sys

from ..data.canonical import DatasetWriter, Manifest, read_manifest
from ..data.info import DatasetInfo
from ..data.storage import DataError
from ..data.unique import hashes_from_text, refuse_repeated_ids
from ..perturb.algorithm4 import NoiseStats
from .regenerate import UnitResult


def commit(writer: DatasetWriter, info: DatasetInfo, results: list[UnitResult], protection: dict,
           noise_column: bool) -> Manifest:
    results = sorted(results, key=lambda r: r.index)
    shards = [s for r in results for s in r.shards]
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
    hashes = [h for r in results for h in r.id_hashes]
    if hashes:  # plan units: ids no manifest vouches for, written by separate workers
        try:
            refuse_repeated_ids(writer.out, manifest, [hashes_from_text(h) for h in hashes])
        except DataError:
            writer.clear()  # a rerun would meet the same input: nothing of this one is kept
            raise
    writer.commit(manifest)
    return manifest


def already_done(writer: DatasetWriter, fingerprint: str) -> Manifest:
    """``--resume`` on a committed output: its manifest, if the same settings and input made it (what a
    kill after the manifest left behind is removed)."""
    out = writer.out
    existing = read_manifest(out)
    if (existing.protection or {}).get("fingerprint") != fingerprint:
        raise DataError(f"--out {out.display} already holds a complete dataset made with other settings or input; "
                        "pass --overwrite to replace it")
    writer.tidy(existing)
    print(f"{out.display}: already complete (same settings); nothing to do", file=sys.stderr)
    return existing
