"""The ``sem-dist`` command line (also ``python -m sem_dist``).

Each subcommand lives in ``sem_dist/commands/<name>.py``. Failures print one line,
``sem-dist <command>: error: <message>``, and exit with status 1 (2 for usage errors).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .commands import run_command
from .runtime.allocator import tune_this_process


def _load_commands():
    mods = [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sem-dist",
        description="Protect image datasets with unlearnable examples (SEM and baselines) on Ray. "
                    "All radii are ℓ∞ in [0,1] pixel units and accept fractions such as 8/255.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=(mod.__doc__ or mod.HELP).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_this_process()
    return run_command(f"sem-dist {args.command}", args._run, args)


if __name__ == "__main__":
    sys.exit(main())
