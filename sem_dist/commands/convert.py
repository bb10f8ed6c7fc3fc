"""Convert a dataset to the canonical format: Parquet shards ``part-NNNNN.parquet`` (columns id, image
{bytes: PNG, path}, label) plus ``manifest.json`` (counts, classes, per-shard sha256, source).

SOURCE: ``digits`` (bundled with scikit-learn), ``mnist:DIR``, ``fashion-mnist:DIR`` (IDX files, gzipped or
not), ``cifar10:DIR``, ``cifar100:DIR`` (python batches), ``imagefolder:DIR[?classes=N&size=S&mode=RGB|L]``
(class-per-folder JPEG/PNG/WebP), ``parquet:URI`` (Hugging Face-style Parquet), ``webdataset:URI`` (tar
shards), or a canonical dataset URI; ``?size=S`` resizes the shorter side to S pixels and centre-crops S×S.
Sources with splits write DEST/train and DEST/test; add ``?split=NAME`` to convert one split straight into
DEST. Images keep their pixels exactly (PNG).
"""
from __future__ import annotations

from ._storage_args import (URI_HELP, add_bad_record_argument, add_shared_fs_argument, add_storage_arguments,
                            add_verbose_argument, storage_options)

NAME = "convert"
HELP = "convert digits / MNIST / CIFAR / an image folder / a canonical dataset to canonical Parquet shards"


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("source", metavar="SOURCE", help="source spec (see above)")
    p.add_argument("dest", metavar="DEST", help="output folder URI; must be empty or new")
    p.add_argument("--shard-rows", type=int, default=None, metavar="N",
                   help="images per shard (default: the input's shard size, else ~64 MiB of pixels per shard)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset sem-dist wrote at DEST (never deletes anything else)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted convert at DEST with the same SOURCE and flags: shards it recorded as "
                        "written are not written again (with --ray, finished units are not read again either)")
    p.add_argument("--ray", action="store_true",
                   help="list, read, decode, resize and write in parallel on Ray (imagefolder:, parquet:, "
                        "webdataset: sources); the driver holds metadata only. Embedded local Ray unless "
                        "--address or $RAY_ADDRESS names a cluster, whose nodes must all reach SOURCE and DEST")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (implies --ray); default: $RAY_ADDRESS, else an embedded local Ray")
    add_shared_fs_argument(p, "SOURCE, DEST; with --ray")
    add_bad_record_argument(p)
    add_storage_arguments(p)
    add_verbose_argument(p)


def run(args) -> int:
    if args.shard_rows is not None and args.shard_rows < 1:
        raise ValueError("--shard-rows must be >= 1")
    common = (args.source, args.dest, args.shard_rows, args.on_bad_record, args.overwrite, storage_options(args))
    if args.ray or args.address:
        from ..distributed.convert import convert_ray

        written = convert_ray(*common, address=args.address, shared_fs=args.shared_fs, resume=args.resume)
    else:
        from ..data.convert import convert

        written = convert(*common, resume=args.resume)
    for split, m in written.items():
        skipped = f", {len(m.skipped)} bad records skipped (listed in the manifest)" if m.skipped else ""
        label = f"{split}: " if split else ""
        print(f"{label}{m.count} images, {m.num_classes} classes, {m.channels}×{m.height}×{m.width}, "
              f"{len(m.shards)} shard(s){skipped}")
    return 0
