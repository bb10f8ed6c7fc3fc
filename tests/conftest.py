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
