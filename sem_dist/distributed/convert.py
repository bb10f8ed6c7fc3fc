"""``sem-dist convert --ray``: a plan source → canonical shards, streamed through Ray Data.

Tasks read and decode (``distributed.sources``), then each batch of ``shard_rows`` image rows is encoded
and written as one shard at its final key in DEST by the task that holds it, named by its content
(``part-<first 16 hex of its sha256>.parquet``: a task cannot know its batch's position, and the same bytes
always get the same name). The driver only sees one small record per shard (name, rows, sha256, size, the
batch's bad records, 8-byte hashes of its ids) and commits with the manifest last, listing the shards in
input order: memory on the driver grows with the number of shards and 8 bytes per image, never with pixels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from ..data.canonical import SHARD_PREFIX, DatasetWriter, Manifest, ShardInfo, encode_shard
from ..data.convert import convert_targets, default_shard_rows, new_manifest
from ..data.plan import portable_uri
from ..data.records import BadRecordPolicy
from ..data.info import DatasetInfo
from ..data.storage import DataError, Location, StorageOptions, open_location
from ..data.unique import id_hashes, refuse_repeated_ids
from .sources import read_source_rows


def convert_ray(spec: str, dest: str, shard_rows: int | None = None, on_bad_record: str = "fail",
                overwrite: bool = False, storage: StorageOptions | None = None,
                address: str | None = None, shared_fs: bool = False) -> dict[str, Manifest]:
    """:func:`sem_dist.data.convert.convert` with the reading, decoding and encoding on Ray (``shared_fs``: local
    SOURCE and DEST are mounted on every node)."""
    from .cluster import connect
    from .storage import check_cluster_visible

    storage = storage or StorageOptions()
    # the endpoint resolved here travels to the tasks as an explicit option (a profile name goes as it is)
    storage = dataclasses.replace(storage, s3_endpoint=storage.endpoint())
    source, parsed, targets = convert_targets(spec, dest, overwrite, storage)
    # tasks on any node read SOURCE and write DEST
    check_cluster_visible({"SOURCE": source.location, "DEST": dest}, shared_fs, address=address)
    connect(address)
    written = {}
    for name, folder in targets:
        ds, info = read_source_rows(parsed, storage, name or None)
        written[name] = write_rows(ds, info, folder, storage, shard_rows, BadRecordPolicy(on_bad_record))
    return written


def write_rows(ds, info: DatasetInfo, out: Location, storage: StorageOptions, shard_rows: int | None,
               policy: BadRecordPolicy) -> Manifest:
    """Image rows → a committed canonical dataset at ``out`` (see the module docstring)."""
    writer = DatasetWriter(out)
    writer.clear()  # an earlier interrupted run's leftovers
    out_uri, fail = portable_uri(out), policy.mode == "fail"
    shape = (info.channels, info.height, info.width)

    def write(batch: dict) -> dict:
        errors = batch["error"]
        good = [i for i, e in enumerate(errors) if not e]
        bad = json.dumps([[str(batch["id"][i]), str(e)] for i, e in enumerate(errors) if e])
        if not good or (fail and len(good) < len(errors)):  # a failing run writes nothing more
            return {"name": [""], "rows": [0], "sha256": [""], "bytes": [0], "bad": [bad], "hashes": [b""]}
        ids = [str(batch["id"][i]) for i in good]
        data = encode_shard(ids, batch["image"][good], batch["label"][good])
        sha = hashlib.sha256(data).hexdigest()
        name = f"{SHARD_PREFIX}{sha[:16]}.parquet"
        open_location(out_uri, storage).write_bytes(name, data)
        return {"name": [name], "rows": [len(ids)], "sha256": [sha], "bytes": [len(data)], "bad": [bad],
                "hashes": [id_hashes(ids).tobytes()]}

    rows = shard_rows or default_shard_rows(*shape)
    # a shard's pixels plus its encoding; declaring it also keeps Ray from fusing this stage into the
    # decode tasks, which would then decode a whole shard's images in one task instead of in parallel
    results = ds.map_batches(write, batch_size=rows, batch_format="numpy", memory=2 * rows * int(np.prod(shape)))
    results.context.execution_options.preserve_order = True  # shard order (and names) fixed by the input
    shards, hashes = [], []
    rows_out = iter(results.iter_rows())
    try:
        for r in rows_out:
            for rid, reason in json.loads(r["bad"]):
                policy.reject(rid, info.source["uri"], reason)
            if r["rows"]:
                shards.append(ShardInfo(str(r["name"]), int(r["rows"]), str(r["sha256"]), int(r["bytes"])))
                hashes.append(np.frombuffer(r["hashes"], dtype=np.uint64))
        if not shards:
            skipped = f" after skipping {len(policy.skipped)} bad records" if policy.skipped else ""
            raise DataError(f"{info.source['uri']}: the dataset is empty{skipped}")
        manifest = new_manifest(info, shards, shape, info.source, policy)
        refuse_repeated_ids(out, manifest, hashes)
        writer.commit(manifest)
    except BaseException:
        getattr(rows_out, "close", lambda: None)()  # stops the pipeline (cancels its tasks) before cleaning up
        writer.clear()
        raise
    return manifest

