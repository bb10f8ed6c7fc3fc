"""The paper's evaluation protocol as one call: train a victim per seed, report mean ± std, and keep a
RobustBench-style record (data, the protection read from the dataset's manifest, victim config, seeds,
per-seed learning curves, final clean test accuracy, wall time) from which tables are generated.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..data.arrays import ArrayDataset
from ..data.storage import StorageOptions
from .train import VictimConfig, VictimResult, train_victim

RECORD_SCHEMA = "sem-dist/evaluation/1"
PAPER_SEEDS = (0, 6178, 42)  # "repeated three times with different random seeds s ∈ {0, 6178, 42}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as for the paper's ± over three seeds); std 0 for one run."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclass(frozen=True)
class VictimData:
    """Where the victims' data live. Read (:meth:`load`) wherever a victim trains: this process for a small
    evaluation, else each Ray task on its own node, so no driver ever holds the split."""

    train: str
    test: str
    clean: str | None = None  # the clean originals of ``train`` (same ids), for partial poisoning
    storage: StorageOptions = field(default_factory=StorageOptions)

    def load(self) -> tuple[ArrayDataset, ArrayDataset]:
        from ..data import load_dataset
        from .poisoning import attach_clean_originals

        train, test = load_dataset(self.train, storage=self.storage), load_dataset(self.test, storage=self.storage)
        if self.clean:
            train = attach_clean_originals(train, load_dataset(self.clean, storage=self.storage))
        if train.classes != test.classes:
            raise ValueError(f"--train and --test have different classes ({len(train.classes)} vs {len(test.classes)})")
        return train, test


def dataset_summary(data: ArrayDataset) -> dict:
    return {"size": len(data), "classes": list(data.classes), "image_shape": list(data.images.shape[1:]),
            "has_noise": data.noise is not None}


def protection_of(data: ArrayDataset) -> dict | None:
    """How the dataset was protected (method, full config, seed, noise stats, ...) and where its clean
    source came from, as its manifest records them; None for unprotected data."""
    manifest = data.meta.get("manifest") or {}
    if not manifest.get("protection"):
        return None
    return dict(manifest["protection"], source=manifest.get("source"))


def describe(train: ArrayDataset, test: ArrayDataset) -> dict:
    """What a record says of its data (sizes, classes, shapes, the protection), computed where they were read."""
    return {"train": dataset_summary(train), "test": dataset_summary(test), "protection": protection_of(train)}


def seed_configs(cfg: VictimConfig, seeds: Sequence[int]) -> list[VictimConfig]:
    """One validated config per seed (``cfg.seed`` replaced by each)."""
    if not seeds:
        raise ValueError("give at least one seed")
    cfg.validate()
    return [dataclasses.replace(cfg, seed=int(seed)) for seed in seeds]


def evaluate_victims(cfg: VictimConfig, train: ArrayDataset, test: ArrayDataset, device: torch.device,
                     seeds: Sequence[int] = (0,), *, train_uri: str | None = None, test_uri: str | None = None,
                     progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train one victim per seed in this process, one after another, and return the JSON-ready record.
    ``progress(seed_index, stats)`` receives each run's per-step stats (see :func:`train_victim`). Ray runs
    the same configs one task each (``distributed.cells.train_victims``) with the same numbers: each run
    depends on its seed alone."""
    t0 = time.perf_counter()
    runs = [train_victim(c, train, test, device, None if progress is None else (lambda s, i=i: progress(i, s)))
            for i, c in enumerate(seed_configs(cfg, seeds))]
    return victim_record(cfg, seeds, runs, describe(train, test), str(device), time.perf_counter() - t0,
                         train_uri, test_uri)


def victim_record(cfg: VictimConfig, seeds: Sequence[int], runs: Sequence[VictimResult], described: dict,
                  device: str, wall_s: float, train_uri: str | None, test_uri: str | None) -> dict:
    """The RobustBench-style record of finished runs (``described``: :func:`describe` of their data)."""
    from ..data.storage import redact_uri  # records never hold keys, tokens or signed query strings

    acc_mean, acc_std = mean_std([r.test_acc for r in runs])
    victim = dataclasses.asdict(cfg)
    victim.pop("seed")
    uri = {"train": train_uri, "test": test_uri}
    return {
        "schema": RECORD_SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"sem_dist": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": device,
        "data": {k: {"uri": None if uri[k] is None else redact_uri(uri[k]), **described[k]} for k in ("train", "test")},
        "protection": described["protection"],
        "victim": victim,
        "seeds": [int(s) for s in seeds],
        "test_acc": acc_mean,
        "test_acc_std": acc_std,
        "train_acc": mean_std([r.train_acc for r in runs])[0],
        "runs": [dict(seed=int(s), **r.to_dict()) for s, r in zip(seeds, runs)],
        "wall_s": wall_s,
    }
