"""Algorithm 4 throughput and memory: the in-process engine against Ray Data on this machine's cores, in
one run on the same data (synthetic 3×32×32, 10 classes, canonical shards on local disk) and the same
generator (a small-CNN SEM method; its weights do not change the cost). Both go through
``sem-dist regenerate``'s code path; images/s is the regenerate stage's (Ray: actor start-up included,
cluster start-up not).

Memory: peak RSS of the whole process tree (this driver + the embedded Ray's processes and workers),
sampled every 0.1 s, for a Ray Data run over N and over 10·N images; ``rss_growth_10x`` is their ratio
(goal ≤ 1.2: the driver holds metadata only and each actor one shard at a time).
"""
from __future__ import annotations

import os
import platform
import tempfile
import threading
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
    from ..protect_dataset import RegenerateRequest, regenerate_dataset

    m = regenerate_dataset(RegenerateRequest(generator=generator, data=data, out=out, regen_actors=actors,
                                             device="cpu"))
    return m.protection["regeneration"]


def run(quick: bool = False, verbose: bool = True) -> dict:
    import ray

    os.environ.setdefault("SEM_DIST_PROGRESS", "0" if not verbose else "auto")
    n, shard_rows = (160, 20) if quick else (1000, 50)
    steps, samples = (2, 1) if quick else (10, 5)  # quick: K_u·J = 2 passes per image; full: the paper's 50
    actors = max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(actors)  # the in-process loop gets the same cores the actors get
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        gen = _generator(t / "method.pt", steps, samples)
        data_n = _dataset(t / "data_n", n, shard_rows)
        data_10n = _dataset(t / "data_10n", 10 * n, shard_rows)
        # a fresh local cluster: without address="local", ray.init joins any `ray start` cluster on the machine
        ray.init(address="local", num_cpus=actors, _node_ip_address="127.0.0.1", include_dashboard=False)
        local = _regenerate(gen, data_n, str(t / "local"), None)
        if verbose:
            print(f"in-process: {local['images_per_s']:.1f} img/s", flush=True)
        with PeakRSS() as rss_n:
            ray_n = _regenerate(gen, data_n, str(t / "ray_n"), actors)
        if verbose:
            print(f"ray data ({actors} actors): {ray_n['images_per_s']:.1f} img/s, peak tree RSS "
                  f"{rss_n.peak / 2**20:.0f} MiB", flush=True)
        with PeakRSS() as rss_10n:
            ray_10n = _regenerate(gen, data_10n, str(t / "ray_10n"), actors)
        if verbose:
            print(f"ray data 10·N: {ray_10n['images_per_s']:.1f} img/s, peak tree RSS {rss_10n.peak / 2**20:.0f} MiB",
                  flush=True)
        same = (Path(t / "local" / "manifest.json").exists() and
                [p.read_bytes() for p in sorted((t / "local").glob("part-*"))] ==
                [p.read_bytes() for p in sorted((t / "ray_n").glob("part-*"))])
    return {
        "bench": "regen", "quick": quick, "images": n, "images_10x": 10 * n, "shard_rows": shard_rows,
        "image": [3, 32, 32], "arch": "small_cnn", "K_u": steps, "J": samples, "actors": actors,
        "local_img_s": local["images_per_s"], "ray_img_s": ray_n["images_per_s"],
        "ray_over_local": ray_n["images_per_s"] / local["images_per_s"],
        "ray_10x_img_s": ray_10n["images_per_s"],
        "peak_rss_bytes_n": rss_n.peak, "peak_rss_bytes_10x": rss_10n.peak,
        "rss_growth_10x": rss_10n.peak / rss_n.peak, "outputs_identical": same,
        "driver_peak_rss_bytes_n": rss_n.driver_peak, "driver_peak_rss_bytes_10x": rss_10n.driver_peak,
        "driver_rss_growth_10x": rss_10n.driver_peak / rss_n.driver_peak,
        "processes_n": rss_n.processes, "processes_10x": rss_10n.processes,
        "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count(), "torch": torch.__version__,
        "machine": platform.machine(),
    }
