"""Random streams for the perturbation math.

Every random draw the solvers make goes through a stream whose ``rand(*shape)`` returns a
``(n, *shape)`` tensor of U[0,1) values, one row per sample. Two kinds:

- :class:`CounterStream` (Algorithms 1 and 4): counter-based. Row i's values are a pure integer hash of
  (row key k_i, draw counter d, element index e), so a draw for the whole batch is one chain of integer
  tensor kernels, and a row's values depend on nothing but its key: not on the batch it sits in, the
  worker that computes it, or the device (integer math gives the same bits on CPU and GPU). Algorithm 4
  keys rows by ``(seed, sample id)``; Algorithm 1 by ``(seed, step, global row index)``, so each Ray Train
  worker draws only its own rows.
- :class:`BatchStream` draws the whole batch from one ``torch.Generator`` (victim training and the
  robustness terms, where values need not be independent of the batch or the device).

The hash (scheme :data:`RNG_SCHEME`) is SplitMix64 (Steele, Lea & Flood 2014): with the finaliser
mix(z) = z ⊕ (z ≫ 31) of z ← (z ⊕ (z ≫ 30))·M1, z ← (z ⊕ (z ≫ 27))·M2, all mod 2^64,

    row key     k_i = blake2b-64(seed, sample id)  (Algorithm 4)  or  mix(s + (r + 1)·G)  (Algorithm 1,
                global row r of the step keyed s = step_seed(seed, step), a 63-bit blake2b)
    draw key    k_{i,d} = mix(k_i + (d + 1)·G2)
    hash c      h_{i,d,c} = mix(k_{i,d} + (c + 1)·G)      (the c-th SplitMix64 output seeded k_{i,d})
    floats      u_{i,d,2c} = (bits 63–40 of h)·2^-24,  u_{i,d,2c+1} = (bits 31–8 of h)·2^-24

Values are float32 with 24 random bits (exact in float32); one 64-bit hash serves two elements, which
halves the memory traffic the (memory-bound) hash costs.

torch has no uint64 arithmetic: int64 add and multiply wrap mod 2^64 (two's complement), which is all
SplitMix64 needs; logical right shifts are arithmetic shifts with the sign-extended bits masked off.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch

RNG_SCHEME = "splitmix64-counter/1"  # recorded in checkpoints and manifests; bump when the noise bits change

GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment G (2^64 / golden ratio, odd)
DRAW_GAMMA = 0xD1B54A32D192ED03  # G2: an odd constant distinct from G, for the draw counter
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _int64(v: int) -> int:
    """An unsigned 64-bit value as the int64 with the same bits."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def mix64_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser, in place on an int64 tensor. One scratch buffer serves every shift:
    the hash is memory-bound, and fresh temporaries would cost more than the arithmetic."""
    tmp = torch.empty_like(z)
    for shift, mult in ((30, MIX1), (27, MIX2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        z.bitwise_xor_(tmp.bitwise_and_((1 << (64 - shift)) - 1))
        if mult is not None:
            z.mul_(_int64(mult))
    return z


def to_unit_pairs(z: torch.Tensor) -> torch.Tensor:
    """Each int64 hash → two U[0,1) float32 values (24 bits each, exact): bits 63–40, then bits 31–8.
    Written through one scratch buffer into the interleaved output (fresh temporaries and int-to-float
    type promotion cost 2.5× as much here)."""
    out = torch.empty((*z.shape, 2), dtype=torch.float32, device=z.device)
    tmp = torch.empty_like(z)
    for k, shift in enumerate((40, 8)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        out[..., k].copy_(tmp.bitwise_and_(0xFFFFFF))
    return out.mul_(2.0 ** -24).flatten(-2)


def sample_key(seed: int, sample_id: str) -> int:
    """A 64-bit key (as int64) from the run seed and a sample id, stable across processes and machines."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def step_seed(seed: int, step: int, purpose: str = "alg1") -> int:
    """A 63-bit seed for one step (or epoch) of a seeded loop, by ``purpose``: stable across processes and
    machines, so any step's draws can be recomputed from (seed, step) alone."""
    digest = hashlib.blake2b(f"{purpose}\x00{seed}\x00{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def row_keys(base_key: int, rows: torch.Tensor) -> torch.Tensor:
    """Keys for rows ``rows`` (global indices) of a batch keyed ``base_key``: mix(base + (row + 1)·G)."""
    z = rows.to(torch.int64) + 1
    return mix64_(z.mul_(_int64(GOLDEN)).add_(_int64(base_key)))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


class CounterStream:
    """Row i's draws from the counter-based hash keyed by ``keys[i]`` (int64, one per row)."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to(torch.int64)
        self.n = len(self.keys)
        self.device = self.keys.device
        self.draws = 0

    @classmethod
    def for_samples(cls, seed: int, ids: Sequence[str], device: torch.device | str = "cpu") -> "CounterStream":
        """Algorithm 4: row i keyed by ``sample_key(seed, ids[i])``."""
        return cls(torch.tensor([sample_key(seed, i) for i in ids], dtype=torch.int64, device=device))

    @classmethod
    def for_rows(cls, base_key: int, rows: torch.Tensor) -> "CounterStream":
        """Algorithm 1: rows ``rows`` of a global batch keyed ``base_key`` (a worker passes only its own)."""
        return cls(row_keys(base_key, rows))

    def rand(self, *shape: int) -> torch.Tensor:
        m = math.prod(shape)
        draw_key = mix64_(self.keys + _int64((self.draws + 1) * DRAW_GAMMA))
        self.draws += 1
        counters = torch.arange(1, (m + 1) // 2 + 1, dtype=torch.int64, device=self.device).mul_(_int64(GOLDEN))
        z = mix64_(draw_key[:, None] + counters)
        return to_unit_pairs(z)[:, :m].reshape(self.n, *shape)


class BatchStream:
    """All rows from one generator."""

    def __init__(self, generator: torch.Generator, n: int):
        self.generator = generator
        self.n = n
        self.device = generator.device

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand((self.n, *shape), generator=self.generator, device=self.generator.device)


def uniform_ball(stream, rho: float, *shape: int) -> torch.Tensor:
    """δ ~ U(−ρ, ρ) i.i.d. per element, shape ``(n, *shape)``. ρ = 0 draws nothing (zeros), so a
    zero-radius perturbation leaves the stream exactly where no perturbation would."""
    if rho == 0:
        return torch.zeros((stream.n, *shape), device=stream.device)
    return stream.rand(*shape).mul(2.0 * rho).sub_(rho)  # (2u − 1)·ρ in two passes
