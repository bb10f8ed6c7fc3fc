"""Dispatch ``python -m sem_dist.bench NAME``; the last line of output is one JSON object.

Every module of this package with a ``run(quick, verbose, **options)`` function is a benchmark, named
after the module with ``-`` for ``_`` (``train_scaling`` → ``train-scaling``). A benchmark module may
define ``add_arguments(group)`` for options of its own (``NAME --help`` lists them); their values reach
its ``run`` as keyword arguments."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from .. import bench
from ..runtime.allocator import tune_this_process

COMMON = ("name", "quick", "json")


def benchmarks() -> dict[str, str]:
    """Benchmark name → module name (modules are imported only when chosen)."""
    return {m.name.replace("_", "-"): m.name for m in pkgutil.iter_modules(bench.__path__)
            if not m.name.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = benchmarks()
    parser = argparse.ArgumentParser(prog="python -m sem_dist.bench", description=__doc__)
    parser.add_argument("name", choices=sorted(names))
    parser.add_argument("--quick", action="store_true", help="a smaller run (see each benchmark's docstring)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    name = next((a for a in argv if not a.startswith("-")), None)
    module = importlib.import_module(f"{bench.__name__}.{names[name]}") if name in names else None
    if module is not None and hasattr(module, "add_arguments"):
        module.add_arguments(parser.add_argument_group(f"{name} options"))
    args = parser.parse_args(argv)
    extra = {k: v for k, v in vars(args).items() if k not in COMMON}
    tune_this_process()  # as the CLI does: a benchmark measures the engine users run
    result = module.run(quick=args.quick, verbose=not args.json, **extra)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
