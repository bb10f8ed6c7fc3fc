"""The ``ray job submit`` entry points (``jobs/<command>.py``): one ``sem-dist`` subcommand each, same flags
(its own ``add_arguments``), same function (its own ``run``), run against the cluster the job was
submitted to.

Inside a Ray job ``RAY_ADDRESS`` is set: the entry point joins that cluster, reports which copy of
``sem_dist`` every node imports (the job's ``working_dir``, see docs/cluster.md), steps back into its working
directory should a node have unpacked it again meanwhile (:func:`reenter_working_dir`), runs the command, then
prints where every output went. Failures end the job with the CLI's one line,
``jobs/<command>.py: error: MESSAGE``, and exit status 1 (Ray marks the job FAILED).

``--config FILE``: for a command that has its own ``--config`` (protect: a YAML of config keys) that one
is used unchanged; any other command gets a YAML of its flags (``train: s3://...``, ``seeds: 0,1``;
keys are flag names, ``-`` or ``_``), with flags on the command line taking precedence.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import yaml

from ..data.storage import redact_uri
from . import run_command

# outputs a command's flags name, with what the user should know about each
OUTPUT_FLAGS = {"out": "output", "checkpoint_dir": "checkpoints", "record": "record (JSON, on the driver's node)"}


def _job_config_defaults(parser: argparse.ArgumentParser, path: str) -> None:
    """Load a YAML of flag values as the parser's defaults (required flags it sets become optional)."""
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        parser.error(f"--config {path}: {str(exc).splitlines()[0]}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    defaults = {}
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions or dest in ("help", "config"):
            parser.error(f"--config {path}: unknown flag {key!r}")
        action = actions[dest]
        if action.type is not None and not isinstance(value, (list, bool)):  # the flag's own parser (8/255, 0,1)
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
                parser.error(f"--config {path}: {key}: {exc}")
        action.required = False
        defaults[dest] = value
    parser.set_defaults(**defaults)


def parse(command: str, mod, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"jobs/{command}.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"`sem-dist {command}` as a Ray job.\n\n{(mod.__doc__ or mod.HELP).strip()}")
    mod.add_arguments(parser)
    if "--config" not in parser._option_string_actions:  # the command has none: a YAML of its flags
        parser.add_argument("--config", metavar="FILE",
                            help="YAML of this job's flags (keys are flag names); command-line flags win")
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv)
        if known.config:
            _job_config_defaults(parser, known.config)
    return parser.parse_args(argv)


def report_package() -> None:
    """Which ``sem_dist`` the driver and every alive node import: a mismatch (an old copy installed on a
    node, no working_dir) shows here instead of as a confusing failure inside a worker."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # max_calls=1: the worker exits after its one call. A worker on a node whose copy of the working_dir another
    # node's agent unpacks again later (see reenter_working_dir) is left in a deleted directory; reused by a
    # later task of this job it would die at `import torch`.
    @ray.remote(num_cpus=0, max_calls=1)
    def where() -> tuple[str, str]:
        import sem_dist

        return ray.get_runtime_context().get_node_id(), f"sem_dist {sem_dist.__version__} from {sem_dist.__file__}"

    import sem_dist

    print(f"[job] driver: sem_dist {sem_dist.__version__} from {sem_dist.__file__}", flush=True)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=120)
    for node, text in ray.get(ready):
        print(f"[job] node {node}: {text}", flush=True)
    if pending:
        print(f"[job] {len(pending)} node(s) did not answer within 120 s", flush=True)


def working_dir() -> str | None:
    """This process's working directory by name (``$PWD`` if it is already gone)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return os.environ.get("PWD")


def reenter_working_dir(path: str | None) -> bool:
    """Step into ``path`` again when the directory this process runs in is no longer the one there.

    A job's driver runs in the job's working_dir, which the Ray runtime-env agent of the driver's node
    unpacked. Ray nodes that share one temp dir (two ``ray start`` on one machine without ``--temp-dir``
    share ``/tmp/ray``) share ``runtime_resources/``, and each node's agent, the first time a task of the job
    lands on it, deletes the directory and unpacks the package again at the same path (Ray 2.60:
    ``WorkingDirPlugin.create`` calls ``download_and_unpack_package(..., overwrite=True)``, which
    ``rmtree``s it). The driver is then left in a deleted directory: ``getcwd()`` fails with ENOENT, a
    relative path opens nothing, and ``import torch`` ends the process with ``Intel oneMKL FATAL ERROR:
    Cannot load …/torch/lib/libtorch_cpu.so.`` (MKL's loader, a constructor in libtorch_cpu.so, calls
    ``getcwd`` and exits with status 2 when it fails). Called once every node has unpacked the package
    (:func:`report_package` waits for a task on each), this moves the driver into the new copy.
    True when it did."""
    if not path:
        return False
    try:
        there = os.stat(path)
    except OSError:  # the path itself is gone: nothing to step into
        return False
    try:
        if os.path.samestat(os.stat("."), there):
            return False
    except OSError:
        pass
    os.chdir(path)
    return True


def report_outputs(command: str, args: argparse.Namespace) -> None:
    for dest, label in OUTPUT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "record":
            value = os.path.abspath(value)
        print(f"[job] {label}: {redact_uri(value)}", flush=True)
        if command == "protect" and dest == "out":
            print(f"[job] manifest: {redact_uri(value).rstrip('/')}/manifest.json", flush=True)
    if command == "protect" and getattr(args, "checkpoint_dir", None) is None:
        print("[job] checkpoints: the default location for --out (see docs/data.md)", flush=True)


def main(command: str, argv: list[str] | None = None) -> int:
    prog = f"jobs/{command}.py"
    try:
        mod = importlib.import_module(f"sem_dist.commands.{command}")
    except ModuleNotFoundError as exc:  # the hook: jobs/tune.py runs `sem-dist tune` as soon as it exists
        if exc.name != f"sem_dist.commands.{command}":
            raise
        print(f"{prog}: error: `sem-dist {command}` is not built yet in this version of sem_dist", file=sys.stderr)
        return 2
    args = parse(command, mod, argv)
    start_dir = working_dir()

    def run(a: argparse.Namespace) -> int:
        address = getattr(a, "address", None) or os.environ.get("RAY_ADDRESS")
        if address:  # submitted to a cluster (or pointed at one): join it before the command does
            from ..distributed.cluster import connect

            connect(address)
            report_package()  # every alive node has unpacked the working_dir once it returns
            if reenter_working_dir(start_dir):
                print(f"[job] a node unpacked the job's working_dir again over this driver's ({start_dir}): nodes "
                      "on one machine share Ray's temp dir; the driver moved into the new copy (give each node "
                      "its own --temp-dir, see docs/cluster.md)", flush=True)
        code = mod.run(a)
        report_outputs(command, a)
        return code

    return run_command(prog, run, args)
