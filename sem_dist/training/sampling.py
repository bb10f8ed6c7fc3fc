"""Minibatches by (seed, step): what lets Algorithm 1 and the victims resume at any step on any machine."""
from __future__ import annotations

import torch

from ..runtime.rng import make_generator, step_seed


class StepSampler:
    """Minibatch indices for step i: positions [iB, (i+1)B) of a stream of seeded epoch permutations.

    No sample is dropped at epoch ends and the batch of any step is computable from (seed, step) alone.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=make_generator(
                step_seed(self.seed, epoch, purpose="epoch")))}
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            mask = epochs == e
            out[mask] = self._perm(e)[offsets[mask]]
        return out
