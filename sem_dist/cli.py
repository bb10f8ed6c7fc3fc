"""The ``sem-dist`` command line (also ``python -m sem_dist``).

Each subcommand lives in ``sem_dist/commands/<name>.py``. Failures print one line,
``sem-dist <command>: error: <message>``, and exit with status 1 (2 for usage errors).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands
from .allocator import tune_this_process


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


def refuse_credentials_in(args: argparse.Namespace) -> None:
    """Refuse every argument that is a URI with credentials, before anything shows, stores or ships it."""
    from .data.storage import refuse_credentials

    for dest, value in vars(args).items():
        if isinstance(value, str):
            refuse_credentials(value, f"--{dest.replace('_', '-')}")


def run_command(prog: str, run, args: argparse.Namespace) -> int:
    """``run(args)`` with the CLI's failure contract: one line ``PROG: error: MESSAGE`` on stderr, exit 1."""
    saved = os.environ.get("SEM_DIST_VERBOSE")
    if getattr(args, "verbose", False):  # --verbose: Ray's own output on the console (distributed.logs)
        os.environ["SEM_DIST_VERBOSE"] = "1"
    try:
        refuse_credentials_in(args)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; SEM_DIST_DEBUG=1 shows the traceback
        if os.environ.get("SEM_DIST_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    finally:  # this run's setting only (an in-process caller runs more commands)
        if saved is None:
            os.environ.pop("SEM_DIST_VERBOSE", None)
        else:
            os.environ["SEM_DIST_VERBOSE"] = saved


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_this_process()
    return run_command(f"sem-dist {args.command}", args._run, args)


if __name__ == "__main__":
    sys.exit(main())
