"""Partial poisoning (Table 11): only a seeded fraction of the training set carries its defensive noise.

``mixed`` trains on the protected subset plus the clean originals of the rest; ``clean-only`` trains on
the unprotected rest alone (the baseline that tells whether the protected part helped the victim at all).
Clean originals come from the stored int8 noise (``ArrayDataset.clean_images``), which is exact; a
protected set written without its noise gets it back from the clean originals (:func:`attach_clean_originals`).
"""
from __future__ import annotations

import numpy as np

from ..data.arrays import ArrayDataset
from ..runtime.rng import step_seed

POISON_MODES = ("mixed", "clean-only")
NEEDS_ORIGINALS = ("the training set stores no noise: protect with `sem-dist protect --keep-noise` or give the "
                   "clean originals (`sem-dist evaluate --clean URI`)")


def attach_clean_originals(protected: ArrayDataset, clean: ArrayDataset) -> ArrayDataset:
    """``protected`` with its int8 noise recovered as protected − clean, matching rows by id.

    Exact because protection never clips (x + noise stays in [0, 255]); a difference outside int8 means
    the two sets are not a protected copy and its original.
    """
    where = {i: k for k, i in enumerate(clean.ids)}
    missing = [i for i in protected.ids if i not in where]
    if missing:
        raise ValueError(f"{len(missing)} training ids have no clean original (first: {missing[0]!r})")
    original = clean.images[[where[i] for i in protected.ids]]
    if original.shape != protected.images.shape:
        raise ValueError(f"clean originals have shape {original.shape[1:]}, the training set {protected.images.shape[1:]}")
    noise = protected.images.astype(np.int16) - original.astype(np.int16)
    if np.abs(noise).max(initial=0) > 127:
        raise ValueError("the clean originals differ from the training images by more than any stored noise could "
                         "(not the same dataset?)")
    return protected.with_images(protected.images, noise.astype(np.int8))


def poison_indices(n: int, ratio: float, seed: int) -> np.ndarray:
    """Sorted indices of the round(ratio·n) samples that keep their noise, drawn from ``seed`` alone."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"poison ratio {ratio} is outside [0, 1]")
    rng = np.random.default_rng(step_seed(seed, 0, purpose="poison"))
    return np.sort(rng.permutation(n)[:int(round(ratio * n))])


def partial_poisoning(data: ArrayDataset, ratio: float, mode: str, seed: int) -> tuple[ArrayDataset, dict]:
    """The training set a partially poisoned victim sees, and a record of what was done.

    In ``mixed`` mode the returned noise is zero on the clean rows, so ``clean_images()`` stays exact
    for later steps (early stopping's clean validation).
    """
    if mode not in POISON_MODES:
        raise ValueError(f"unknown poisoning mode {mode!r}; choose one of {', '.join(POISON_MODES)}")
    if data.noise is None:
        raise ValueError(f"partial poisoning needs the clean originals, but {NEEDS_ORIGINALS}")
    idx = poison_indices(len(data), ratio, seed)
    poisoned = np.zeros(len(data), dtype=bool)
    poisoned[idx] = True
    clean = data.clean_images()
    if mode == "mixed":
        images = np.where(poisoned[:, None, None, None], data.images, clean)
        noise = np.where(poisoned[:, None, None, None], data.noise, np.int8(0)).astype(np.int8)
        out = data.with_images(images, noise)
    else:
        keep = np.flatnonzero(~poisoned)
        if len(keep) == 0:
            raise ValueError(f"--mode clean-only with poison ratio {ratio} leaves no clean sample to train on")
        out = data.with_images(clean, None).subset(keep)
    info = {"ratio": ratio, "mode": mode, "poisoned": int(len(idx)), "train_size": len(out),
            "poisoned_indices": idx.tolist()}
    return out, info
