"""Dispatch ``python -m sem_dist.bench NAME``; the last line of output is one JSON object."""
from __future__ import annotations

import argparse
import json
import sys

from . import alg1, regen, train_scaling

BENCHES = {"alg1": alg1, "regen": regen, "train-scaling": train_scaling}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sem_dist.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes in under a minute")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args(argv)
    result = BENCHES[args.name].run(quick=args.quick, verbose=not args.json)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
