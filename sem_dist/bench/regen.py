"""Algorithm 4 throughput and memory: the in-process engine against Ray Data on this machine's cores, in
one run on the same data (synthetic 3×32×32, 10 classes, canonical shards on local disk) and the same
generator (a small-CNN SEM method; its weights do not change the cost). Both go through
``sem-dist regenerate``'s code path, with the malloc settings of :mod:`sem_dist.runtime.allocator` (this process
gets them from the benchmark's main, the actors from the runtime environment, as in ``sem-dist``).

Throughput: first ``rounds`` interleaved rounds over N images (in-process, Ray, in-process, Ray, ...), so
that load other jobs put on a shared machine falls on both alike; then one run of each over 10·N images.
``ray_over_local`` (goal ≥ 0.95) is the 10·N runs' ratio, end to end: the regenerate stage's wall time with
the actor pool's start-up included (``pool_startup_s``, ≈ 3 s here; cluster start-up excluded), spread over
10,000 images rather than 1,000 so that a fixed cost of seconds does not pass for a rate. At N the medians
are reported too: ``ray_n_over_local`` end to end, and ``ray_work_over_local`` after the pool's start-up,
the rate a long run approaches. ``busy_share_10x``: for each stage of the Ray run over 10·N (read, noise =
the model, write), the share of its workers' time spent working between its first start and last end.

Memory: peak RSS of the whole process tree (this driver + the embedded Ray's processes and workers),
sampled every 0.1 s, for a Ray Data run over N and over 10·N images; ``rss_growth_10x`` is their ratio
(goal ≤ 1.2: the driver holds metadata only and each actor one shard at a time). Before each measured
Ray run the previous pool's actors are waited out, so each peak is that run's own.
"""
from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _tree_rss(root: int) -> tuple[int, int, int]:
    """(sum of RSS over ``root`` and all its descendants, ``root``'s own RSS, process count), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, count, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total, count = total + rss.get(pid, 0), count + 1
        stack += children.get(pid, [])
    return total, rss.get(root, 0), count


class PeakRSS:
    """Samples the process tree's RSS in a background thread while the ``with`` block runs."""

    def __enter__(self):
        self.peak = self.driver_peak = self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        tree, driver, count = _tree_rss(os.getpid())
        self.peak, self.driver_peak = max(self.peak, tree), max(self.driver_peak, driver)
        self.processes = max(self.processes, count)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.1)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _dataset(folder: Path, n: int, shard_rows: int) -> str:
    from ..data import save_dataset
    from ..data.arrays import ArrayDataset

    rng = np.random.default_rng(0)
    # smooth random images (PNG of pure noise would make encoding dominate)
    small = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    images = np.ascontiguousarray(small.repeat(4, axis=2).repeat(4, axis=3))
    data = ArrayDataset([f"img{i:06d}" for i in range(n)], images, rng.integers(0, 10, n), [str(c) for c in range(10)])
    save_dataset(data, str(folder), shard_rows=shard_rows)
    return str(folder)


def _generator(path: Path, steps: int, samples: int) -> str:
    from ..config import resolve_config
    from ..perturb.methods import get_method, method_state

    cfg = resolve_config("sem", 32, overrides={"trainer.arch": "small_cnn", "solver.steps": steps,
                                               "solver.samples": samples})
    torch.save(method_state(get_method(cfg, 10, 3, 32, torch.device("cpu"))), path)
    return str(path)


def _regenerate(generator: str, data: str, out: str, actors: int | None) -> dict:
    from ..engine.spec import EngineSpec, RunSpec
    from ..protect.run import regenerate_dataset

    m = regenerate_dataset(RunSpec(data=data, out=out, generator=generator, device="cpu",
                                   engine=EngineSpec(regen_actors=actors)))
    return m.protection["regeneration"]


def _settle(baseline: int, timeout_s: float = 30.0) -> None:
    """Wait until the process tree is back to ``baseline`` processes (the last pool's actors have exited)."""
    deadline = time.monotonic() + timeout_s
    while _tree_rss(os.getpid())[2] > baseline and time.monotonic() < deadline:
        time.sleep(0.2)


def _median(values: list[float]) -> float:
    return float(np.median(values))


def run(quick: bool = False, verbose: bool = True, rounds: int = 2) -> dict:
    import ray

    from ..runtime.allocator import worker_env

    os.environ.setdefault("SEM_DIST_PROGRESS", "0" if not verbose else "auto")
    n, shard_rows = (160, 20) if quick else (1000, 50)
    steps, samples = (2, 1) if quick else (10, 5)  # quick: K_u·J = 2 passes per image; full: the paper's 50
    actors = max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(actors)  # the in-process loop gets the same cores the actors get
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        gen = _generator(t / "method.pt", steps, samples)
        data_n = _dataset(t / "data_n", n, shard_rows)
        data_10n = _dataset(t / "data_10n", 10 * n, shard_rows)
        # a fresh local cluster: without address="local", ray.init joins any `ray start` cluster on the machine;
        # its workers get the malloc settings `connect` gives them (this process has them from bench's main).
        # Logical CPUs: one per model actor plus one each for the read and write actors; the cores stay the
        # machine's, which the in-process run uses too
        ray.init(address="local", num_cpus=actors + 2, _node_ip_address="127.0.0.1", include_dashboard=False,
                 runtime_env={"env_vars": worker_env()})
        time.sleep(2.0)  # let the cluster's own processes finish starting
        baseline = _tree_rss(os.getpid())[2]
        local, ray_n, peaks = [], [], []
        for r in range(rounds):
            local.append(_regenerate(gen, data_n, str(t / f"local{r}"), None))
            _settle(baseline)
            with PeakRSS() as rss_n:
                ray_n.append(_regenerate(gen, data_n, str(t / f"ray{r}"), actors))
            peaks.append(rss_n)
            if verbose:
                print(f"round {r}: in-process {local[-1]['images_per_s']:.1f} img/s; ray data ({actors} actors) "
                      f"{ray_n[-1]['images_per_s']:.1f} img/s end to end, {ray_n[-1]['pool_startup_s']:.1f}s "
                      f"pool start-up, {ray_n[-1]['images_per_s_after_startup']:.1f} img/s after it; peak tree "
                      f"RSS {rss_n.peak / 2**20:.0f} MiB", flush=True)
        local_10n = _regenerate(gen, data_10n, str(t / "local_10n"), None)
        _settle(baseline)
        with PeakRSS() as rss_10n:
            ray_10n = _regenerate(gen, data_10n, str(t / "ray_10n"), actors)
        if verbose:
            busy = ", ".join(f"{k} {v['busy_share']:.0%} of {v['workers']}" for k, v in ray_10n["stages"].items())
            print(f"10·N: in-process {local_10n['images_per_s']:.1f} img/s; ray data {ray_10n['images_per_s']:.1f} "
                  f"img/s end to end; peak tree RSS {rss_10n.peak / 2**20:.0f} MiB; stages busy: {busy}", flush=True)
        same = all((t / f"local{r}" / "manifest.json").exists() and
                   [p.read_bytes() for p in sorted((t / f"local{r}").glob("part-*"))] ==
                   [p.read_bytes() for p in sorted((t / f"ray{r}").glob("part-*"))] for r in range(rounds))
    local_img_s = _median([x["images_per_s"] for x in local])
    ray_img_s = _median([x["images_per_s"] for x in ray_n])
    ray_work = _median([x["images_per_s_after_startup"] for x in ray_n])
    peak_n = max(p.peak for p in peaks)
    driver_n = max(p.driver_peak for p in peaks)
    return {
        "bench": "regen", "quick": quick, "images": n, "images_10x": 10 * n, "shard_rows": shard_rows,
        "image": [3, 32, 32], "arch": "small_cnn", "K_u": steps, "J": samples, "actors": actors, "rounds": rounds,
        "local_img_s": local_10n["images_per_s"], "ray_img_s": ray_10n["images_per_s"],
        "ray_over_local": ray_10n["images_per_s"] / local_10n["images_per_s"],
        "local_n_img_s": local_img_s, "ray_n_img_s": ray_img_s, "ray_n_over_local": ray_img_s / local_img_s,
        "ray_work_img_s": ray_work, "ray_work_over_local": ray_work / local_img_s,
        "pool_startup_s": _median([x["pool_startup_s"] for x in ray_n]),
        "stages_10x": ray_10n["stages"],
        "busy_share_10x": {k: v["busy_share"] for k, v in ray_10n["stages"].items()},
        "round_ratios": [r["images_per_s"] / lo["images_per_s"] for r, lo in zip(ray_n, local)],
        "peak_rss_bytes_n": peak_n, "peak_rss_bytes_10x": rss_10n.peak,
        "rss_growth_10x": rss_10n.peak / peak_n, "outputs_identical": same,
        "driver_peak_rss_bytes_n": driver_n, "driver_peak_rss_bytes_10x": rss_10n.driver_peak,
        "driver_rss_growth_10x": rss_10n.driver_peak / driver_n,
        "processes_n": max(p.processes for p in peaks), "processes_10x": rss_10n.processes,
        "load_avg_1m_before": load_before, "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count(),
        "torch": torch.__version__, "machine": platform.machine(),
    }


def add_arguments(g) -> None:
    g.add_argument("--rounds", type=int, default=2, help="interleaved in-process/Ray rounds (default 2)")
