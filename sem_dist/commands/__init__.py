"""``sem-dist`` subcommands: one module each, exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. The CLI discovers every module in this package.

A command's ``run(args)`` is its Python API too: the CLI (``sem_dist.cli``) and the Ray Job entry points
(:mod:`._job`) both call it through :func:`run_command`, which holds the one failure contract.
"""
from __future__ import annotations

import argparse
import os
import sys


def refuse_credentials_in(args: argparse.Namespace) -> None:
    """Refuse every argument that is a URI with credentials, before anything shows, stores or ships it."""
    from ..data.storage import refuse_credentials

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
