"""``sem-dist convert --ray``: a plan source → canonical shards, through the stages of Algorithm 4 on Ray Data
without the model (``distributed.regen_stages.run_units``: read → write).

Each work unit of the source's plan (a class folder, a Parquet file or a range of its row groups, a tar
shard) is read, decoded and cut into output shards of ``--shard-rows`` rows by a CPU actor; CPU actors
encode and write each shard at its final key, ``part-NNNNN-KKKKK.parquet`` (shard K of unit N: the names of
protect's plan units), and the driver records each finished unit in the ledger in ``DEST/_staging``, so a
killed convert resumes with ``--resume`` without redoing a finished unit. The driver sees one small row per
shard (name, rows, sha256, size, bad records, 8-byte hashes of its ids) and commits with the manifest last:
its memory grows with the number of shards and 8 bytes per image, never with pixels.
"""
from __future__ import annotations

import dataclasses

from ..data.canonical import DatasetWriter, Manifest
from ..data.convert import convert_targets, new_manifest, start_output
from ..data.records import BadRecord, BadRecordPolicy
from ..data.sources.plan import SourcePlan, portable_uri
from ..data.sources.registry import PLAN_KINDS
from ..data.storage import DataError, Location, StorageOptions
from ..data.unique import hashes_from_text, refuse_repeated_ids
from ..engine.ledger import Ledger
from ..engine.spec import EngineSpec
from ..engine.units import RegenJob


def convert_ray(spec: str, dest: str, shard_rows: int | None = None, on_bad_record: str = "fail",
                overwrite: bool = False, storage: StorageOptions | None = None,
                address: str | None = None, shared_fs: bool = False, resume: bool = False) -> dict[str, Manifest]:
    """:func:`sem_dist.data.convert.convert` with the reading, decoding and encoding on Ray (``shared_fs``: local
    SOURCE and DEST are mounted on every node)."""
    from .cluster import connect
    from .storage import check_cluster_visible

    storage = storage or StorageOptions()
    # the endpoint resolved here travels to the tasks as an explicit option (a profile name goes as it is)
    storage = dataclasses.replace(storage, s3_endpoint=storage.endpoint())
    source, parsed, targets = convert_targets(spec, dest, overwrite, storage, resume)
    if parsed.kind not in PLAN_KINDS:
        raise DataError(f"{parsed.display}: convert --ray reads {', '.join(k + ':' for k in PLAN_KINDS)} sources; "
                        "convert others without --ray")
    # tasks on any node read SOURCE and write DEST
    check_cluster_visible({"SOURCE": source.location, "DEST": dest}, shared_fs, address=address)
    connect(address)
    written = {}
    for name, folder in targets:
        plan = source.plan(source.resolve_split(name or parsed.split))
        written[name] = convert_plan(plan, folder, storage, shard_rows, on_bad_record, resume)
    return written


def convert_plan(plan: SourcePlan, out: Location, storage: StorageOptions, shard_rows: int | None,
                 on_bad_record: str, resume: bool) -> Manifest:
    """One split of a plan source → a committed canonical dataset at ``out`` (see the module docstring)."""
    from .logs import progress_bars
    from .regen_stages import run_units

    image = plan.image_spec()
    info = plan.info(image)
    writer = DatasetWriter(out)
    settings = {"engine": "ray", "options": plan.options, "shard_rows": shard_rows, "on_bad_record": on_bad_record,
                "image": dataclasses.asdict(image), "units": plan.units}
    finished = start_output(writer, plan.as_split(plan.reader.location), settings, resume)
    if finished is not None:
        return finished
    ledger = Ledger(writer.staging)
    done = ledger.finished()
    job = RegenJob(out_uri=portable_uri(out), staging_uri=portable_uri(writer.staging), method_uri="",
                   storage=storage, keep_noise=False,
                   on_bad_record=on_bad_record, plan=plan, image=image, shard_rows=shard_rows)
    pending = [i for i in range(len(plan.units)) if i not in done]
    try:
        results = [*done.values(), *run_units(job, pending, EngineSpec(), progress_bars())]
    except BadRecord:
        writer.clear()  # --on-bad-record fail: nothing half-written under DEST
        raise
    results.sort(key=lambda r: r.index)
    policy = BadRecordPolicy(on_bad_record, [s for r in results for s in r.skipped])
    shards = [s for r in results for s in r.shards]
    if not shards:
        skipped = f" after skipping {len(policy.skipped)} bad records" if policy.skipped else ""
        raise DataError(f"{info.source['uri']}: the dataset is empty{skipped}")
    manifest = new_manifest(info, shards, (info.channels, info.height, info.width), info.source, policy)
    try:  # ids no manifest vouches for, written by separate workers: a repeat is refused
        refuse_repeated_ids(out, manifest, [hashes_from_text(h) for r in results for h in r.id_hashes])
    except DataError:
        writer.clear()
        raise
    writer.commit(manifest)
    return manifest
