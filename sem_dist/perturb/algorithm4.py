"""Algorithm 4 (noise regeneration) and the exact int8 noise storage.

With θ frozen, the δ^u solver runs over EVERY sample (no drop_last gap). Each sample draws its
randomness from a stream seeded by (seed, sample id), so its noise is the same whichever batch or
worker computes it. Noise is stored as int8 = round(255·δ^u) and the protected image is the uint8
``clip(x + noise, 0, 255)``: storing the image (or x and the noise) is exact and lossless.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.arrays import ArrayDataset
from ..data.records import Chunk


def max_level(rho_u: float) -> int:
    """Largest integer noise level within ±ρ_u (8 for 8/255; rounding never exceeds the budget)."""
    return int(math.floor(255.0 * rho_u + 1e-6))


def quantize(delta: torch.Tensor, rho_u: float) -> torch.Tensor:
    """δ in [0,1] units → int8 grey levels, clipped to ±floor(255·ρ_u)."""
    q = max_level(rho_u)
    return torch.round(delta * 255.0).clamp_(-q, q).to(torch.int8)


def apply_noise(images: np.ndarray | torch.Tensor, noise: np.ndarray | torch.Tensor):
    """uint8 image + int8 noise → protected uint8 image (exact)."""
    if isinstance(images, torch.Tensor):
        return (images.to(torch.int16) + noise.to(torch.int16)).clamp_(0, 255).to(torch.uint8)
    return np.clip(images.astype(np.int16) + noise.astype(np.int16), 0, 255).astype(np.uint8)


def regenerate(method, batches: Iterable[tuple[Sequence[str], np.ndarray, np.ndarray]],
               device: torch.device) -> Iterator[tuple[Sequence[str], np.ndarray]]:
    """Algorithm 4 for any fitted :class:`~sem_dist.perturb.methods.NoiseMethod`:
    stream ``(ids, uint8 NCHW images, labels)`` batches to ``(ids, int8 noise)`` batches."""
    for ids, images, labels in batches:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        yield ids, quantize(method.perturb(x, y, ids), method.cfg.budget.rho_u).cpu().numpy()


@dataclass
class NoiseStats:
    """Running totals behind :func:`noise_stats`, so streamed (shard-by-shard) noise can be summarised
    without ever holding all of it; ``merge`` combines the totals of separate shards or workers."""

    max_abs: int = 0
    sum_abs: int = 0
    nonzero: int = 0
    size: int = 0

    def update(self, noise: np.ndarray) -> "NoiseStats":
        a = np.abs(noise.astype(np.int16))
        if a.size:
            self.max_abs = max(self.max_abs, int(a.max()))
            self.sum_abs += int(a.sum(dtype=np.int64))
            self.nonzero += int(np.count_nonzero(a))
            self.size += int(a.size)
        return self

    def merge(self, other: "NoiseStats") -> "NoiseStats":
        return NoiseStats(max(self.max_abs, other.max_abs), self.sum_abs + other.sum_abs,
                          self.nonzero + other.nonzero, self.size + other.size)

    def result(self) -> dict:
        n = max(self.size, 1)
        return {"linf_levels": self.max_abs, "linf": self.max_abs / 255.0, "mean_abs_levels": self.sum_abs / n,
                "fraction_nonzero": self.nonzero / n}


def noise_stats(noise: np.ndarray) -> dict:
    """Summary of int8 noise in grey levels and [0,1] units."""
    return NoiseStats().update(noise).result()


def chunk_noise(method, chunk: Chunk, device: torch.device) -> np.ndarray:
    """Algorithm 4 over one output shard's records: int8 noise, solved in ``regen_batch_size`` batches formed
    inside the shard (both engines form them alike, so block methods such as NTGA get the same blocks)."""
    noise = np.empty(chunk.images.shape, dtype=np.int8)
    pos = 0
    batches = ArrayDataset(chunk.ids, chunk.images, chunk.labels, []).iter_batches(method.regen_batch_size())
    for ids, part in regenerate(method, batches, device):
        noise[pos:pos + len(ids)] = part
        pos += len(ids)
    return noise


def protected(chunk: Chunk, noise: np.ndarray, keep_noise: bool) -> tuple[np.ndarray, np.ndarray | None, NoiseStats]:
    """A shard's protected images, the noise column to store (``--keep-noise``) and its noise totals."""
    return apply_noise(chunk.images, noise), noise if keep_noise else None, NoiseStats().update(noise)
