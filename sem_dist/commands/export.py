"""Export a dataset (usually a protected one) in a format other tools read.

--format png (default): a PNG ImageFolder tree, ``DIR/<class>/<id>.png`` plus ``DIR/export.json`` written
last (torchvision's ImageFolder layout). Pixels are exact (PNG is lossless). Unsafe characters in class
names and ids are replaced, with a short hash of the original added so names stay unique.

--format npz: one NumPy .npz file (no pickles inside): images uint8 [N, C, H, W] (NCHW; use
images.transpose(0, 2, 3, 1) for NHWC), labels int64, ids, classes, and when the noise is known, noise
int8 [N, C, H, W] in grey levels (1/255 of the pixel range), rho_u and method.

--format pickle-int8: the pickled int8 NumPy noise array [N, C, H, W] in grey levels, rows in the dataset's
order, that the official REM/SEM training scripts load with --noise-path.

Noise is known when the dataset stores it (`sem-dist protect --keep-noise`) or when --clean gives the clean
originals (noise = protected − clean, matched by id). An existing output is never replaced.
"""
from __future__ import annotations

from ._storage_args import URI_HELP, add_storage_arguments, storage_options

NAME = "export"
HELP = "write a (protected) dataset as a PNG ImageFolder tree, an .npz, or the official scripts' noise pickle"


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("uri", metavar="URI", help="dataset to export (canonical URI, or any source spec; "
                                              "add ?split=NAME for a dataset with splits)")
    p.add_argument("dir", metavar="DEST", help="png: output folder URI, empty or new; npz / pickle-int8: a new "
                                               "file URI (e.g. noise.npz, noise.pkl)")
    p.add_argument("--format", choices=("png", "npz", "pickle-int8"), default="png",
                   help="png: ImageFolder tree; npz: images, labels, ids and int8 noise; pickle-int8: the int8 "
                        "noise array [N, C, H, W] in grey levels for the official scripts' --noise-path "
                        "(default: %(default)s)")
    p.add_argument("--clean", metavar="URI",
                   help="the clean originals of URI (same ids): the noise is recovered as URI − clean when URI was "
                        "protected without --keep-noise")
    add_storage_arguments(p)


def run(args) -> int:
    from ..data.export import export_imagefolder
    from ..perturb.interop import export_arrays

    if args.format == "png":
        if args.clean:
            raise ValueError("--clean only applies to --format npz and pickle-int8 (PNG holds images only)")
        record = export_imagefolder(args.uri, args.dir, storage_options(args))
        print(f"{record['count']} images in {len(record['classes'])} class folders")
        return 0
    record = export_arrays(args.uri, args.dir, args.format, args.clean, storage_options(args))
    noise = "with noise" if record["has_noise"] else "without noise (not stored; give --clean)"
    print(f"{record['count']} samples {noise} → {record['file']} ({args.format}, {record['bytes']} bytes)")
    return 0
