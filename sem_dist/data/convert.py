"""Any source → canonical shards with a manifest (``sem-dist convert``). A killed convert resumes with
``--resume``: each shard written is recorded in the ledger (``data.ledger``) and not written again."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
from typing import TYPE_CHECKING, Iterator

from ..runtime.progress import bar
from .canonical import MANIFEST, DatasetWriter, Manifest, ShardInfo, read_manifest
from .ledger import Ledger
from .output import check_not_nested, prepare_output
from .records import BadRecord, BadRecordPolicy, Chunk, rebatch
from .sources.registry import open_source, parse_spec
from .sources.split import Split, source_record
from .storage import Location, StorageOptions, file_identities, open_location

if TYPE_CHECKING:  # torch stays out of processes that only convert (e.g. Ray tasks)
    from .arrays import ArrayDataset

SHARD_TARGET_BYTES = 64 << 20  # raw pixels per shard: ~450 images at 224×224×3
# a shard is one unit of parallel work for Ray Data regeneration: CIFAR-10's 50k images make 13 units
MAX_SHARD_ROWS = 4096


def default_shard_rows(channels: int, height: int, width: int) -> int:
    return max(1, min(MAX_SHARD_ROWS, SHARD_TARGET_BYTES // (channels * height * width)))


def shards_of(sp: Split, policy: BadRecordPolicy, shard_rows: int | None) -> Iterator[Chunk]:
    """The split's checked records cut into output shards. Without ``shard_rows`` a canonical input keeps
    its shard size and other sources get :func:`default_shard_rows` for their image size."""
    records = sp.records(policy)
    first = next(records)
    if shard_rows is None:
        if sp.manifest is not None:
            shard_rows = max(s.rows for s in sp.manifest.shards)
        else:
            shard_rows = default_shard_rows(*first.images.shape[1:])
    return rebatch(itertools.chain([first], records), shard_rows)


def new_manifest(sp: Split, shards: list[ShardInfo], shape: tuple[int, int, int], source: dict,
                 policy: BadRecordPolicy, **extra) -> Manifest:
    c, h, w = shape
    return Manifest(count=sum(s.rows for s in shards), channels=c, height=h, width=w, classes=list(sp.classes),
                    shards=shards, source=source, skipped=list(policy.skipped), **extra)


def start_output(writer: DatasetWriter, sp: Split, settings: dict, resume: bool) -> Manifest | None:
    """Ready a convert's output folder: with ``resume`` a dataset already committed there is returned as it is
    (leftovers tidied) and an interrupted one keeps its ledger, which must match ``settings`` and the input
    (a changed input file is named); without, what sem-dist wrote there goes."""
    if resume and writer.out.exists(MANIFEST):
        manifest = read_manifest(writer.out)
        writer.tidy(manifest)
        print(f"{writer.out.display}: already complete; nothing to do", file=sys.stderr)
        return manifest
    if not resume:
        writer.clear()
    files = file_identities(sp.location) if sp.manifest is None and sp.location is not None else None
    identity = {"settings": settings, "source": sp.display, "input_files": files,
                "input_shards": [s.sha256 for s in sp.manifest.shards] if sp.manifest else None}
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    Ledger(writer.staging).open(fingerprint, resume, files, sp.location.display if sp.location else "")
    return None


def convert_split(sp: Split, out: Location, options: dict[str, str], shard_rows: int | None,
                  policy: BadRecordPolicy, resume: bool = False) -> Manifest:
    writer = DatasetWriter(out)
    settings = {"engine": "in-process", "options": options, "shard_rows": shard_rows, "on_bad_record": policy.mode}
    finished = start_output(writer, sp, settings, resume)
    if finished is not None:
        return finished
    ledger = Ledger(writer.staging)
    done = ledger.entries()  # shard number → its entry; the stream is re-read, finished shards not re-written
    shards: list[ShardInfo] = []
    shape, noise_column = None, True
    with bar(None, f"convert {sp.display}", unit="img") as pb:
        try:
            for i, chunk in enumerate(shards_of(sp, policy, shard_rows)):
                if i in done:
                    shards.append(ShardInfo(**done[i]["shard"]))
                else:
                    shards.append(writer.write_shard(i, chunk, chunk.noise))
                    ledger.record({"index": i, "shard": dataclasses.asdict(shards[-1])})
                shape, noise_column = chunk.images.shape[1:], noise_column and chunk.noise is not None
                pb.update(len(chunk))
        except BadRecord:
            writer.clear()  # --on-bad-record fail: nothing half-written under DEST
            raise
    # a protected input keeps its protection record (and its noise, when it had the column)
    protection = sp.manifest.protection if sp.manifest else None
    manifest = new_manifest(sp, shards, shape, source_record(sp, options), policy, protection=protection,
                            noise_column=noise_column)
    writer.commit(manifest)
    return manifest


def convert_targets(spec: str, dest: str, overwrite: bool, storage: StorageOptions | None, resume: bool = False):
    """What a convert writes, checked before anything is: ``(source, parsed spec, [(split, folder)])`` —
    ``dest/<split>`` for sources with splits, ``dest`` itself for one split."""
    parsed = parse_spec(spec)
    source = open_source(parsed, storage)
    out = open_location(dest, storage)
    check_not_nested(source.location, out, "SOURCE", "DEST")
    prepare_output(out, "DEST", resume=resume, overwrite=overwrite)
    names = [source.resolve_split(parsed.split)] if parsed.split else source.split_names()
    return source, parsed, [(name, out.child(name) if name and not parsed.split else out) for name in names]


def convert(spec: str, dest: str, shard_rows: int | None = None, on_bad_record: str = "fail",
            overwrite: bool = False, storage: StorageOptions | None = None, resume: bool = False
            ) -> dict[str, Manifest]:
    """Write every split of ``spec`` to ``dest`` (``dest/<split>`` for sources with splits)."""
    source, parsed, targets = convert_targets(spec, dest, overwrite, storage, resume)
    return {name: convert_split(source.split(name), folder, parsed.options, shard_rows,
                                BadRecordPolicy(on_bad_record), resume) for name, folder in targets}


def save_dataset(data: ArrayDataset, uri: str, shard_rows: int | None = None, overwrite: bool = False,
                 storage: StorageOptions | None = None) -> Manifest:
    """Write in-memory arrays (and their noise, when set) as a canonical dataset at ``uri``."""
    out = open_location(uri, storage)
    prepare_output(out, "output", overwrite=overwrite)
    sp = Split("", "arrays", list(data.classes),
               lambda policy: iter([Chunk(list(data.ids), data.images, data.labels, "arrays", data.noise)]))
    return convert_split(sp, out, {}, shard_rows, BadRecordPolicy("fail"))
