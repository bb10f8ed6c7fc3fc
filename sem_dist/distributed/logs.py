"""Ray's console output: in Ray's log files by default, with one line saying where; back on the console
with ``SEM_DIST_DEBUG=1`` or ``--verbose`` (which sets ``SEM_DIST_VERBOSE=1``).

A driver that :func:`~sem_dist.distributed.cluster.connect` starts or joins Ray through prints only this
package's lines and its progress bars (one per stage: ``algorithm1`` draws Algorithm 1's on Ray Train from
rank 0's steps, ``engine`` Algorithm 4's on Ray Data from the finished units). Quiet means:

- ``ray.init(log_to_driver=False)``: what workers and actors print (Ray Train's controller and worker lines,
  the core_worker notes of its ``PreemptionWatcher``, tracebacks of Ray's own threads, our workers' own
  ``[sem-dist]`` lines) stays in the session's ``worker-*.out`` / ``worker-*.err`` files;
- the driver's ``ray`` loggers (ray.init's banner, the token-auth notice, Ray Train and Tune driver lines)
  write to ``<session>/logs/sem-dist-driver-<pid>.log`` instead of stderr;
- Ray Data's driver logger (its ``logging_progress`` blocks, execution plans) keeps only its own file,
  ``<session>/logs/ray-data/ray-data.log``: its console handler is left out (``RAY_DATA_LOGGING_CONFIG``,
  unless the user set one), and its progress bars are off where a stage draws its own;
- Python warnings raised inside Ray's own modules (``RayDeprecationWarning`` and the like) go there too;
- the messages the cluster publishes to drivers (``(raylet) WARNING: N PYTHON worker processes have been
  started…``, worker deaths), which Ray prints on stdout even without ``log_to_driver``, go to the driver log
  too (``ray._private.worker.print_to_stdstream``, the one function Ray's error thread prints them with).

The driver's C++ core writes its ERROR lines to stderr as well as to ``python-core-driver-*.log``, and Ray
has no switch for that copy; Ray Data's actor pools cause one such line per pool (ray-project/ray#53727).
:func:`native_stderr_to_log` sends the driver's native stderr to the driver log while a Ray Data stage runs.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

DRIVER_LOG = "sem-dist-driver-{pid}.log"
QUIET_DATA_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")
_OFF = logging.CRITICAL + 1
_SAID: set[str] = set()
_QUIET = False  # connect() set this process up quietly (not, e.g., a test session's own ray.init)


def verbose() -> bool:
    """Ray's own output on the console: ``SEM_DIST_DEBUG`` or ``SEM_DIST_VERBOSE`` set (and not ``0``)."""
    return any(os.environ.get(v, "") not in ("", "0") for v in ("SEM_DIST_DEBUG", "SEM_DIST_VERBOSE"))


def logs_dir() -> str | None:
    """This driver's Ray session log folder (None before ``ray.init``)."""
    import ray

    node = ray._private.worker._global_node
    return node.get_logs_dir_path() if node is not None else None


class _DriverLog(logging.Handler):
    """The driver's Ray records → ``<session>/logs/sem-dist-driver-<pid>.log``; held in memory while
    ``ray.init`` has no session folder yet (the token-auth notice comes before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.file: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None and not self.open():
            if len(self.held) < 1000:
                self.held.append(record)
            return
        self.file.emit(record)

    def open(self) -> bool:
        folder = logs_dir()
        if folder is None:
            return False
        os.makedirs(folder, exist_ok=True)
        self.file = logging.FileHandler(driver_log_path())
        self.file.setFormatter(self.formatter)
        for record in self.held:
            self.file.emit(record)
        self.held = []
        return True


def before_init() -> None:
    """Before ``ray.init``: unless verbose, the ``ray`` logger writes to the driver log, not stderr, and
    Ray Data's logger to its file only."""
    global _QUIET
    if verbose():
        return
    _QUIET = True
    import ray._private.log as ray_log

    ray_log.generate_logging_config()  # Ray's console handler exists (it is made once, at import)
    ray_logger = logging.getLogger("ray")
    for h in ray_logger.handlers:
        if isinstance(h, ray_log.PlainRayHandler):
            h.setLevel(_OFF)
    if not any(isinstance(h, _DriverLog) for h in ray_logger.handlers):
        handler = _DriverLog()
        handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
        ray_logger.addHandler(handler)
    if not getattr(warnings.showwarning, "_sem_dist", False):
        warnings.showwarning = _ray_warnings_to_log(warnings.showwarning)
    quiet_ray_data()


def _ray_warnings_to_log(show):
    """``warnings.showwarning`` that sends warnings raised in Ray's own files to the driver log."""
    ray_dir = os.sep + "ray" + os.sep

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if ray_dir in str(filename):
            logging.getLogger("ray.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning._sem_dist = True
    return showwarning


def quiet_ray_data() -> None:
    """Ray Data's driver-side messages to its session file only (its console handler off)."""
    if "ray.data" in sys.modules:  # configured at import: take its console handler off
        from ray._private.log import PlainRayHandler

        for h in logging.getLogger("ray.data").handlers:
            if h.name == "console" or isinstance(h, PlainRayHandler):
                h.setLevel(_OFF)
    else:  # read when ray.data is imported; a user's own config wins
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(QUIET_DATA_CONFIG))


def _published_to_log(data: dict, ignore_prefix: bool = False, **_) -> None:
    """Stands in for Ray's ``print_to_stdstream`` in its error thread: the lines go to the driver log."""
    for line in data.get("lines", []):
        logging.getLogger("ray.published").warning("(%s) %s", data.get("pid", "ray"), line)


def after_init() -> None:
    """After ``ray.init``: the held records go to the driver log, the messages Ray publishes to drivers
    follow them there, and one line says where Ray's logs are."""
    for h in logging.getLogger("ray").handlers:
        if isinstance(h, _DriverLog) and h.file is None:
            h.open()
    if _QUIET and not verbose():
        import ray._private.worker as ray_worker

        if hasattr(ray_worker, "print_to_stdstream"):  # a global looked up at each call of its error thread
            ray_worker.print_to_stdstream = _published_to_log
    folder = logs_dir()
    if folder and folder not in _SAID:
        _SAID.add(folder)
        shown = "shown here too" if verbose() else "SEM_DIST_DEBUG=1 or --verbose shows them here"
        print(f"sem-dist: Ray's own logs: {folder} (on each node of a cluster; {shown})", file=sys.stderr,
              flush=True)


def driver_log_path() -> str | None:
    folder = logs_dir()
    return os.path.join(folder, DRIVER_LOG.format(pid=os.getpid())) if folder else None


@contextlib.contextmanager
def native_stderr_to_log():
    """Inside: what native code writes to file descriptor 2 (the driver's C++ core worker: its ERROR copy
    of each log line, e.g. one per Ray Data actor pool) is appended to the driver log, while Python's
    ``sys.stderr`` (our bars, messages, errors) still reaches the console through a duplicate of the
    original descriptor. Does nothing when verbose, or when ``connect()`` did not set this process up."""
    path = driver_log_path() if _QUIET and not verbose() else None
    if path is None:
        yield
        return
    old = sys.stderr
    old.flush()
    saved = os.dup(2)
    console = open(os.dup(saved), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                   errors="backslashreplace")
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = console
    try:
        yield
    finally:
        console.flush()
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
        console.close()


def progress_bars() -> bool:
    """Whether Ray Data draws its own progress bars (only when verbose: our stages draw one bar each)."""
    from ..runtime.progress import enabled

    return enabled() and verbose()
