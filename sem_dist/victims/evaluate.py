"""The paper's evaluation protocol as one call: train a victim per seed, report mean ± std, and keep a
RobustBench-style record (data, the protection read from the dataset's manifest, victim config, seeds,
per-seed learning curves, final clean test accuracy, wall time) from which tables are generated.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..data.arrays import ArrayDataset
from .train import VictimConfig, VictimResult, train_victim

RECORD_SCHEMA = "sem-dist/evaluation/1"
PAPER_SEEDS = (0, 6178, 42)  # "repeated three times with different random seeds s ∈ {0, 6178, 42}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as for the paper's ± over three seeds); std 0 for one run."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def dataset_summary(data: ArrayDataset, uri: str | None) -> dict:
    from ..data.storage import redact_uri  # records never hold keys, tokens or signed query strings

    return {"uri": None if uri is None else redact_uri(uri), "size": len(data), "classes": list(data.classes),
            "image_shape": list(data.images.shape[1:]), "has_noise": data.noise is not None}


def protection_of(data: ArrayDataset) -> dict | None:
    """How the dataset was protected (method, full config, seed, noise stats, ...) and where its clean
    source came from, as its manifest records them; None for unprotected data."""
    manifest = data.meta.get("manifest") or {}
    if not manifest.get("protection"):
        return None
    return dict(manifest["protection"], source=manifest.get("source"))


def evaluate_victims(cfg: VictimConfig, train: ArrayDataset, test: ArrayDataset, device: torch.device,
                     seeds: Sequence[int] = (0,), *, train_uri: str | None = None, test_uri: str | None = None,
                     progress: Callable[[int, dict], None] | None = None,
                     runner: Callable[[list[VictimConfig]], list[VictimResult]] | None = None) -> dict:
    """Train one victim per seed (``cfg.seed`` is replaced by each) and return the JSON-ready record.

    ``progress(seed_index, stats)`` receives each run's per-step stats (see :func:`train_victim`).
    ``runner`` trains the per-seed configs elsewhere (e.g. one Ray task each,
    ``distributed.cells.train_victims``) and returns their results in the same order; by default they
    train one after another in this process. Each run depends on its seed alone, so both give the same numbers.
    """
    if not seeds:
        raise ValueError("give at least one seed")
    cfg.validate()
    t0 = time.perf_counter()
    configs = [dataclasses.replace(cfg, seed=int(seed)) for seed in seeds]
    if runner is not None:
        runs = runner(configs)
    else:
        runs = [train_victim(c, train, test, device, None if progress is None else (lambda s, i=i: progress(i, s)))
                for i, c in enumerate(configs)]
    acc_mean, acc_std = mean_std([r.test_acc for r in runs])
    victim = dataclasses.asdict(cfg)
    victim.pop("seed")
    return {
        "schema": RECORD_SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"sem_dist": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(device),
        "data": {"train": dataset_summary(train, train_uri), "test": dataset_summary(test, test_uri)},
        "protection": protection_of(train),
        "victim": victim,
        "seeds": [int(s) for s in seeds],
        "test_acc": acc_mean,
        "test_acc_std": acc_std,
        "train_acc": mean_std([r.train_acc for r in runs])[0],
        "runs": [dict(seed=int(s), **r.to_dict()) for s, r in zip(seeds, runs)],
        "wall_s": time.perf_counter() - t0,
    }
