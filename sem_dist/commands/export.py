"""Export a dataset (usually a protected one) as a PNG ImageFolder tree: ``DIR/<class>/<id>.png``, plus
``DIR/export.json`` written last. Pixels are exact (PNG is lossless). Unsafe characters in class names
and ids are replaced, with a short hash of the original added so names stay unique.
"""
from __future__ import annotations

from ._storage_args import URI_HELP, add_storage_arguments, storage_options

NAME = "export"
HELP = "write a (protected) dataset as a browsable PNG ImageFolder tree"


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("uri", metavar="URI", help="dataset to export (canonical URI, or any source spec; "
                                              "add ?split=NAME for a dataset with splits)")
    p.add_argument("dir", metavar="DIR", help="output folder URI; must be empty or new")
    add_storage_arguments(p)


def run(args) -> int:
    from ..data.export import export_imagefolder

    record = export_imagefolder(args.uri, args.dir, storage_options(args))
    print(f"{record['count']} images in {len(record['classes'])} class folders")
    return 0
