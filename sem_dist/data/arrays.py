"""An in-memory image dataset: ids, uint8 NCHW images, int64 labels, class names."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch


@dataclass
class ArrayDataset:
    ids: list[str]
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    noise: np.ndarray | None = None  # (N, C, H, W) int8 defensive noise, when the dataset is protected
    meta: dict = field(default_factory=dict)  # e.g. the manifest of the canonical dataset it came from

    def __post_init__(self):
        n = len(self.ids)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n or len(self.labels) != n:
            raise ValueError(f"{n} ids, {self.images.shape[0]} images and {len(self.labels)} labels do not match")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.noise is not None and (self.noise.dtype != np.int8 or self.noise.shape != self.images.shape):
            raise ValueError(f"noise must be int8 {self.images.shape}, got {self.noise.dtype} {self.noise.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_side(self) -> int:
        return int(min(self.images.shape[2:]))

    def batch(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float [0,1] and labels, for ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.images[idx]).float().div_(255.0)
        return x, torch.from_numpy(self.labels[idx])

    def subset(self, indices: Sequence[int]) -> "ArrayDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset([self.ids[i] for i in idx], self.images[idx], self.labels[idx], list(self.classes),
                            None if self.noise is None else self.noise[idx], dict(self.meta))

    def with_images(self, images: np.ndarray, noise: np.ndarray | None = None) -> "ArrayDataset":
        return ArrayDataset(list(self.ids), images, self.labels, list(self.classes), noise, dict(self.meta))

    def clean_images(self) -> np.ndarray:
        """The unprotected originals: protected − noise is exact because x + noise never clips (see
        ``perturb.regenerate``)."""
        if self.noise is None:
            return self.images
        return (self.images.astype(np.int16) - self.noise).astype(np.uint8)

    def iter_batches(self, batch_size: int) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """``(ids, uint8 images, labels)`` in order, the last batch possibly short."""
        for s in range(0, len(self), batch_size):
            yield self.ids[s:s + batch_size], self.images[s:s + batch_size], self.labels[s:s + batch_size]
