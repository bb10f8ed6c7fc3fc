"""Early stopping against unlearnable examples (Table 5).

The victim holds out a fraction of its (protected) training set for validation; ``clean_ratio`` of that
validation set is replaced by the clean originals. Our reading of the paper's "clean ratio": the
defender of Table 5 has some clean images it trusts, and those sit in the validation set only — the
training rows stay protected. Training stops once validation accuracy has not improved for
``patience`` steps, and the victim keeps the weights of its best validation step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.arrays import ArrayDataset
from ..runtime.rng import step_seed
from .poisoning import NEEDS_ORIGINALS


def holdout_validation(data: ArrayDataset, fraction: float, clean_ratio: float,
                       seed: int) -> tuple[ArrayDataset, ArrayDataset, dict]:
    """Split ``data`` into (train, validation) and swap ``clean_ratio`` of the validation rows for their
    clean originals. Returns both sets and a record of the split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction} must be in (0, 1)")
    if not 0.0 <= clean_ratio <= 1.0:
        raise ValueError(f"validation clean ratio {clean_ratio} is outside [0, 1]")
    n_val = max(1, int(round(fraction * len(data))))
    if n_val >= len(data):
        raise ValueError(f"holding out {n_val} of {len(data)} samples leaves nothing to train on")
    n_clean = int(round(clean_ratio * n_val))
    if n_clean and data.noise is None:
        raise ValueError(f"a clean validation ratio needs the clean originals, but {NEEDS_ORIGINALS}")
    order = np.random.default_rng(step_seed(seed, 0, purpose="holdout")).permutation(len(data))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    val = data.subset(val_idx)
    if n_clean:
        swap = np.random.default_rng(step_seed(seed, 1, purpose="holdout")).permutation(n_val)[:n_clean]
        images = val.images.copy()
        images[swap] = val.clean_images()[swap]
        val = val.with_images(images, None)
    info = {"val_fraction": fraction, "val_size": n_val, "val_clean_ratio": clean_ratio, "val_clean": n_clean,
            "train_size": len(train_idx)}
    return data.subset(train_idx), val, info


@dataclass
class EarlyStopping:
    """Patience counted in training steps between validation checks."""

    patience: int
    best_step: int = 0
    best_acc: float = -1.0
    stopped_at: int | None = None

    def update(self, step: int, val_acc: float) -> bool:
        """Record the validation accuracy at ``step``; True when training should stop (never on an
        improvement)."""
        if val_acc > self.best_acc:
            self.best_step, self.best_acc = step, val_acc
            return False
        if step - self.best_step >= self.patience:
            self.stopped_at = step
            return True
        return False
