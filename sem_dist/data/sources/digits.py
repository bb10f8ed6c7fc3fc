"""scikit-learn's bundled handwritten digits (real data, offline), as a 32×32 grayscale dataset.

The 8×8 originals (16 grey levels) are rescaled to 0–255 and upsampled bilinearly to 32×32: that is
the CIFAR geometry the paper's models, its crop-with-padding-4 transform and its radii were made for,
so every code path runs unchanged. Split: sample i goes to ``test`` when i % 5 == 0 (fixed, 360 test /
1437 train, all ten classes in both).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..arrays import ArrayDataset

SIDE = 32
CLASSES = [str(d) for d in range(10)]


def load_digits(split: str = "train") -> ArrayDataset:
    from sklearn.datasets import load_digits as _load

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits train and test, not {split!r}")
    raw = _load()
    images8 = np.rint(raw.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(len(images8))
    keep = idx[(idx % 5 == 0) == (split == "test")]
    up = np.stack([np.asarray(Image.fromarray(images8[i]).resize((SIDE, SIDE), Image.BILINEAR)) for i in keep])
    ids = [f"digits-{i:04d}" for i in keep]
    return ArrayDataset(ids, up[:, None, :, :], raw.target[keep].astype(np.int64), list(CLASSES))
