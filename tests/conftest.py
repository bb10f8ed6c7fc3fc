"""Shared fixtures. CPU only; torch uses the machine's two cores."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("SEM_DIST_PROGRESS", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def digits():
    from sem_dist.data.digits import load_digits

    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="session")
def sem_protected_digits(digits):
    """The digits training set protected with SEM at the demo's CPU-scale settings (computed once)."""
    from sem_dist.commands.demo import DEMO_OVERRIDES
    from sem_dist.config import resolve_config
    from sem_dist.pipeline import protect_arrays

    train, _ = digits
    cfg = resolve_config("sem", train.image_side, overrides=DEMO_OVERRIDES)
    protected, _ = protect_arrays(cfg, train, torch.device("cpu"))
    return protected, cfg
