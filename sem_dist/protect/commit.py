"""Commit stage: the finished units' shards, already at their final keys in OUT, become a dataset when the
manifest is written (:meth:`.output.Output.commit`: last and atomically, after the ids are checked unique)."""
from __future__ import annotations

from ..data.canonical import Manifest
from ..data.info import DatasetInfo
from ..data.storage import DataError
from ..engine.ledger import UnitResult
from ..perturb.algorithm4 import NoiseStats
from .output import Output


def commit(output: Output, info: DatasetInfo, results: list[UnitResult], protection: dict) -> Manifest:
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
                        noise_column=output.spec.keep_noise)
    return output.commit(manifest, [h for r in results for h in r.id_hashes])
