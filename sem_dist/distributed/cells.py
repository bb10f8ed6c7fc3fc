"""Independent cells of an experiment grid (a generator, a victim, one seed of ``sem-dist evaluate``) as
Ray tasks of one CPU each, so a cluster finishes a grid in about the time of its slowest cell and a
2-core machine runs two at a time.

A cell is any module-level function; it runs with torch limited to one thread (the task's one CPU:
more threads would only fight the neighbouring cells for the cores). Arguments that are
``ObjectRef``s (a generator's noise) are resolved by Ray before the cell starts, so a victim cell submitted
together with its generator simply waits for it. Datasets travel as URIs and each cell reads its own: a
driver never gathers a split, and the object store never holds one.

A cell whose worker process or node is lost (a reclaimed spot node, the OOM killer) runs again, up to
``CELL_RETRIES`` times; Ray also reruns a finished cell whose output was on a lost node when a later cell
needs it. A cell that raises fails at once with its own message: cells are deterministic, so rerunning bad
input would only fail again.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

CELL_RETRIES = 3  # node losses one cell survives; a grid of many cells on spot nodes meets several


def _one_thread(fn: Callable, *args, **kwargs) -> Any:
    import torch

    torch.set_num_threads(1)
    return fn(*args, **kwargs)


def submit(fn: Callable, *args, num_gpus: float = 0.0, **kwargs):
    """``fn(*args, **kwargs)`` as a Ray task with one CPU (and ``num_gpus``); returns its ObjectRef."""
    import ray

    # max_retries counts system failures only (worker or node died); retry_exceptions stays off so an
    # exception the cell raises is final
    task = ray.remote(_one_thread).options(num_cpus=1, num_gpus=num_gpus, max_retries=CELL_RETRIES,
                                           retry_exceptions=False)
    return task.remote(fn, *args, **kwargs)


def _victim(cfg, data, device_name: str):
    """One victim, reading its data from storage in this task: no copy of the split passes the driver."""
    from ..runtime.device import resolve_device
    from ..victims.evaluate import describe
    from ..victims.train import train_victim

    train, test = data.load()
    result = train_victim(cfg, train, test, resolve_device(device_name))
    result.model = None  # the trained network stays in the task; the record needs only the numbers
    return result, describe(train, test)


def train_victims(configs: Sequence, data, *, gpus: float = 0.0, address: str | None = None,
                  shared_fs: bool = False, progress: Callable[[int], None] | None = None) -> tuple[list, dict]:
    """One Ray task per victim config (``sem-dist evaluate``): the results in the order given and what the
    record says of the data (``victims.evaluate.describe``). Each task reads ``data``
    (a ``victims.evaluate.VictimData``) from storage itself, so local paths must be on every node the
    cluster has or may add (``shared_fs``: they are); ``progress(i)`` is called as config ``i`` finishes."""
    from .cluster import connect
    from .storage import check_cluster_visible

    check_cluster_visible({"--train": data.train, "--test": data.test, "--clean": data.clean}, shared_fs,
                          address=address)
    connect(address)
    device = "cuda" if gpus > 0 else "cpu"
    results: list = [None] * len(configs)
    described: dict = {}
    start = lambda i: submit(_victim, configs[i], data, device, num_gpus=gpus)  # noqa: E731
    for i, (result, described) in run_in_order(range(len(configs)), start, lambda i, finished: True):
        results[i] = result
        if progress is not None:
            progress(i)
    return results, described


def run_in_order(order: Sequence, start: Callable[[Any], Any], ready: Callable[[Any, set], bool],
                 window: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Tasks for the items of ``order``, at most ``window`` (default: the cluster's CPUs) running at once,
    each free slot going to the first item of ``order`` that is ``ready(item, finished items)``. Ray runs
    ready tasks in no guaranteed order; this makes ``order`` a priority, so the first table of a grid
    completes first and a stopped run has whole early tables. ``start(item)`` submits a task and returns its
    ObjectRef. Yields (item, value) as tasks finish; a failed task raises here: a cell's own exception as
    itself (its message, not Ray's traceback text around it), a cell lost more than ``CELL_RETRIES`` times as
    Ray's error."""
    import ray

    window = window or max(1, int(ray.cluster_resources().get("CPU", 1)))
    waiting, running, finished = list(order), {}, set()
    while waiting or running:
        while len(running) < window:
            item = next((it for it in waiting if ready(it, finished)), None)
            if item is None:
                break
            waiting.remove(item)
            running[start(item)] = item
        if not running:
            raise RuntimeError(f"{len(waiting)} cells wait for inputs no cell produces (first: {waiting[0]!r})")
        (ref,), _ = ray.wait(list(running), num_returns=1)
        item = running.pop(ref)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            raise err.cause from None
        finished.add(item)
        yield item, value
