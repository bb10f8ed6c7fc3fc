"""Random streams for the perturbation math.

Every random draw the solvers make goes through a stream whose ``rand(*shape)`` returns a
``(n, *shape)`` tensor of U[0,1) values, one row per sample. Two kinds:

- :class:`BatchStream` draws the whole batch from one ``torch.Generator`` (Algorithm 1: fast, and its
  state goes into checkpoints so a resumed run continues the same sequence).
- :class:`SampleStreams` gives every sample its own generator seeded from ``(seed, sample id)``
  (Algorithm 4: a sample's noise does not depend on which batch or worker computed it).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def sample_seed(seed: int, sample_id: str) -> int:
    """A 63-bit seed derived from the run seed and a sample id (stable across processes and machines)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


class BatchStream:
    """All rows from one generator."""

    def __init__(self, generator: torch.Generator, n: int):
        self.generator = generator
        self.n = n
        self.device = generator.device

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand((self.n, *shape), generator=self.generator, device=self.generator.device)


class SampleStreams:
    """Row i from sample i's own generator, seeded by ``sample_seed(seed, ids[i])``."""

    def __init__(self, seed: int, ids: Sequence[str], device: torch.device | str = "cpu"):
        self.generators = [make_generator(sample_seed(seed, i), device) for i in ids]
        self.n = len(self.generators)
        self.device = torch.device(device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g, device=g.device) for g in self.generators])


class RowSlice:
    """Rows ``rows`` of another stream's draws: a worker holding part of a global batch draws the whole
    batch's randomness and keeps its own rows, so the result does not depend on the worker count."""

    def __init__(self, stream, rows: slice):
        self.stream, self.rows = stream, rows
        self.n = len(range(stream.n)[rows])
        self.device = stream.device

    def rand(self, *shape: int) -> torch.Tensor:
        return self.stream.rand(*shape)[self.rows]


def uniform_ball(stream, rho: float, *shape: int) -> torch.Tensor:
    """δ ~ U(−ρ, ρ) i.i.d. per element, shape ``(n, *shape)``. ρ = 0 draws nothing (zeros), so a
    zero-radius perturbation leaves the stream exactly where no perturbation would."""
    if rho == 0:
        return torch.zeros((stream.n, *shape), device=stream.device)
    return (2.0 * stream.rand(*shape) - 1.0) * rho
