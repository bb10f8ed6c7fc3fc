"""Any source → canonical shards with a manifest (``sem-dist convert``)."""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterator

from ..progress import bar
from .canonical import DatasetWriter, Manifest, ShardInfo
from .output import check_not_nested, prepare_output
from .records import BadRecordPolicy, Chunk, rebatch
from .source import Split
from .sources import open_source, parse_spec
from .storage import Location, StorageOptions, open_location

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


def source_record(sp: Split, options: dict[str, str]) -> dict:
    """What the manifest says about the input: redacted URI, split, options (no credentials)."""
    record = {"uri": sp.display, "split": sp.name or None, "options": dict(options)}
    if sp.resize:
        record["resize"] = sp.resize
    return record


def new_manifest(sp: Split, shards: list[ShardInfo], shape: tuple[int, int, int], source: dict,
                 policy: BadRecordPolicy, **extra) -> Manifest:
    c, h, w = shape
    return Manifest(count=sum(s.rows for s in shards), channels=c, height=h, width=w, classes=list(sp.classes),
                    shards=shards, source=source, skipped=list(policy.skipped), **extra)


def convert_split(sp: Split, out: Location, options: dict[str, str], shard_rows: int | None,
                  policy: BadRecordPolicy) -> Manifest:
    writer = DatasetWriter(out)
    writer.clear()  # an earlier interrupted convert's leftovers
    shards: list[ShardInfo] = []
    shape, noise_column = None, True
    with bar(None, f"convert {sp.display}", unit="img") as pb:
        for i, chunk in enumerate(shards_of(sp, policy, shard_rows)):
            shards.append(writer.write_shard(i, chunk, chunk.noise))
            shape, noise_column = chunk.images.shape[1:], noise_column and chunk.noise is not None
            pb.update(len(chunk))
    # a protected input keeps its protection record (and its noise, when it had the column)
    protection = sp.manifest.protection if sp.manifest else None
    manifest = new_manifest(sp, shards, shape, source_record(sp, options), policy, protection=protection,
                            noise_column=noise_column)
    writer.commit(manifest)
    return manifest


def convert_targets(spec: str, dest: str, overwrite: bool, storage: StorageOptions | None):
    """What a convert writes, checked before anything is: ``(source, parsed spec, [(split, folder)])`` —
    ``dest/<split>`` for sources with splits, ``dest`` itself for one split."""
    parsed = parse_spec(spec)
    source = open_source(parsed, storage)
    out = open_location(dest, storage)
    check_not_nested(source.location, out, "SOURCE", "DEST")
    prepare_output(out, "DEST", overwrite=overwrite)
    names = [source.resolve_split(parsed.split)] if parsed.split else source.split_names()
    return source, parsed, [(name, out.child(name) if name and not parsed.split else out) for name in names]


def convert(spec: str, dest: str, shard_rows: int | None = None, on_bad_record: str = "fail",
            overwrite: bool = False, storage: StorageOptions | None = None) -> dict[str, Manifest]:
    """Write every split of ``spec`` to ``dest`` (``dest/<split>`` for sources with splits)."""
    source, parsed, targets = convert_targets(spec, dest, overwrite, storage)
    return {name: convert_split(source.split(name), folder, parsed.options, shard_rows,
                                BadRecordPolicy(on_bad_record)) for name, folder in targets}


def save_dataset(data: ArrayDataset, uri: str, shard_rows: int | None = None, overwrite: bool = False,
                 storage: StorageOptions | None = None) -> Manifest:
    """Write in-memory arrays (and their noise, when set) as a canonical dataset at ``uri``."""
    out = open_location(uri, storage)
    prepare_output(out, "output", overwrite=overwrite)
    sp = Split("", "arrays", list(data.classes),
               lambda policy: iter([Chunk(list(data.ids), data.images, data.labels, "arrays", data.noise)]))
    return convert_split(sp, out, {}, shard_rows, BadRecordPolicy("fail"))
