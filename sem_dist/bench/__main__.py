"""Dispatch ``python -m sem_dist.bench NAME``; the last line of output is one JSON object.

A benchmark module may define ``add_arguments(group)`` for options of its own (``NAME --help`` lists
them); their values reach its ``run`` as keyword arguments."""
from __future__ import annotations

import argparse
import json
import sys

from . import alg1, train_scaling

BENCHES = {"alg1": alg1, "train-scaling": train_scaling}
COMMON = ("name", "quick", "json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m sem_dist.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    name = next((a for a in argv if not a.startswith("-")), None)
    bench = BENCHES.get(name)
    if bench is not None and hasattr(bench, "add_arguments"):
        bench.add_arguments(parser.add_argument_group(f"{name} options"))
    args = parser.parse_args(argv)
    extra = {k: v for k, v in vars(args).items() if k not in COMMON}
    result = BENCHES[args.name].run(quick=args.quick, verbose=not args.json, **extra)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
