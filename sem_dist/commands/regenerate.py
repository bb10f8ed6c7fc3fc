"""Algorithm 4 alone: apply a generator fitted earlier to a dataset and write its protected copy.

--generator is a ``method.pt`` (what ``protect`` fits, kept in OUT/_staging while it runs) or an
Algorithm-1 checkpoint ``generator.pt`` (``--checkpoint-dir`` of ``protect``, or Ray Train's storage),
at a local path or any storage URI; it is loaded with ``weights_only=True``. The noise uses the
generator's recorded config and seed: for the same generator and data the output is the same bytes
whichever engine runs it. The data must have the generator's image size, channels and class count.

Engines: in this process by default; --regen-actors K (or --address) runs an actor pool on Ray Data, one
unit per task: an input shard of a canonical dataset, or a class folder / Parquet file / tar shard of an
imagefolder:, parquet: or webdataset: source (read, decoded and resized in the actor). --resume continues
an interrupted run: every finished unit is kept and each input id is written exactly once.
"""
from __future__ import annotations

from ._storage_args import (URI_HELP, add_bad_record_argument, add_output_arguments, add_ray_arguments,
                            add_storage_arguments, add_verbose_argument, run_spec, summary)

NAME = "regenerate"
HELP = "apply a trained generator to a dataset (Algorithm 4 only) and write a protected copy"


def add_arguments(p) -> None:
    p.epilog = URI_HELP
    p.add_argument("--generator", required=True, metavar="URI", help="method.pt or generator.pt checkpoint")
    p.add_argument("--data", required=True, metavar="URI", help="dataset to protect")
    p.add_argument("--out", required=True, metavar="URI", help="output folder; new or empty, not inside --data")
    g = p.add_argument_group("execution (see docs/data-plane.md)")
    g.add_argument("--device", default="auto", help="in-process engine: auto (CUDA when available), cpu or cuda[:N]")
    add_ray_arguments(g, train=False)
    add_output_arguments(g)
    add_bad_record_argument(p)
    add_storage_arguments(p)
    add_verbose_argument(p)


def run(args) -> int:
    from ..protect.run import regenerate_dataset

    print(summary(regenerate_dataset(run_spec(args, generator=args.generator))))
    return 0
