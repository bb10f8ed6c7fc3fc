"""Apply noise computed elsewhere (another implementation, the official REM/SEM scripts) to a clean canonical
dataset and write a protected canonical dataset, so our victims can judge it.

--noise FILE: an .npz (array ``noise``; ``ids`` and ``rho_u`` used when present, e.g. from
`sem-dist export --format npz`), an .npy, or a pickle of one NumPy array (the official scripts' noise file).
Pickles are read with a restricted unpickler that can build nothing but NumPy arrays: no code in the file runs.
Integer noise is in grey levels (1/255 of the pixel range); float noise in [0,1] pixel units (rounded to
grey levels). Layout [N, C, H, W] (or [N, H, W, C], detected from the dataset's shape); rows follow the
dataset's order unless the file has ids.

Refused with a one-line error: noise beyond the radius (--rho-u, else the file's rho_u, else 8/255), a
count or image shape that does not match the dataset, a pickle holding anything but an array. The protected
image is clip(x + noise, 0, 255); the manifest records the file (redacted URI, sha256, format, units) and
how many values clipping changed.
"""
from __future__ import annotations

from ._storage_args import URI_HELP, add_storage_arguments, storage_options
from .evaluate import fraction_arg

NAME = "import-noise"
HELP = "apply noise from another tool (.npz, .npy, official int8 pickle) to a clean dataset"


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("--data", required=True, metavar="URI", help="the clean canonical dataset the noise was made for")
    p.add_argument("--noise", required=True, metavar="FILE", help="noise file URI (.npz, .npy or pickle)")
    p.add_argument("--out", required=True, metavar="URI", help="where to write the protected dataset (empty or new)")
    p.add_argument("--rho-u", type=fraction_arg, default=None, metavar="R",
                   help="the radius the noise must respect, ℓ∞ in [0,1] pixel units (e.g. 8/255 = 8 grey levels); "
                        "default: the file's rho_u, else 8/255")
    p.add_argument("--keep-noise", action="store_true",
                   help="also store the int8 noise column (lets anyone undo the protection: research use only)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset sem-dist wrote at --out")
    add_storage_arguments(p)


def run(args) -> int:
    from ..perturb.interop import import_noise

    m = import_noise(args.data, args.noise, args.out, args.rho_u, args.keep_noise, args.overwrite,
                     storage_options(args))
    info = m.protection["imported"]
    print(f"{m.count} samples protected with {info['format']} noise ({info['units']}, {info['layout']}, matched by "
          f"{info['matched_by']}); ℓ∞ = {m.protection['noise']['linf_levels']}/255; "
          f"{info['clipped_values']} values clipped at 0/255")
    return 0
