"""Counter-based per-sample randomness: exact bits against an independent NumPy SplitMix64, and
independence of batch composition, worker slicing and device (the hash is integer math only)."""
from __future__ import annotations

import numpy as np
import torch

from sem_dist.config import resolve_config
from sem_dist.models import build_model
from sem_dist.perturb.noise import NoiseSpec, solve_noise
from sem_dist.runtime.rng import CounterStream, sample_key
from sem_dist.training.pgd import frozen

U64 = np.uint64


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser in uint64 NumPy arithmetic (wraps mod 2^64 by definition)."""
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def _reference(keys: list[int], draw: int, m: int) -> np.ndarray:
    """u[i, e] for draw ``draw`` (0-based) of rows keyed ``keys``, as the scheme in rng.py defines it."""
    with np.errstate(over="ignore"):
        k = np.array([key & (2 ** 64 - 1) for key in keys], dtype=U64)
        dk = _mix(k + U64((draw + 1) * 0xD1B54A32D192ED03 % 2 ** 64))
        c = np.arange(1, (m + 1) // 2 + 1, dtype=U64) * U64(0x9E3779B97F4A7C15)
        h = _mix(dk[:, None] + c[None, :])
    hi, lo = h >> U64(40), (h >> U64(8)) & U64(0xFFFFFF)
    return np.stack([hi, lo], axis=-1).reshape(len(keys), -1)[:, :m].astype(np.float64) * 2.0 ** -24


def test_draws_match_an_independent_splitmix64_bit_for_bit():
    ids = ["a", "img-17", "ünïcode", ""]
    stream = CounterStream.for_samples(7, ids)
    keys = [sample_key(7, i) for i in ids]
    first, second = stream.rand(3, 4, 5), stream.rand(7)  # an odd count uses half of the last hash
    assert first.dtype == torch.float32 and first.shape == (4, 3, 4, 5)
    np.testing.assert_array_equal(first.reshape(4, -1).numpy().astype(np.float64), _reference(keys, 0, 60))
    np.testing.assert_array_equal(second.numpy().astype(np.float64), _reference(keys, 1, 7))


def test_values_are_uniform_and_rows_differ():
    u = CounterStream.for_rows(123, torch.arange(64)).rand(3, 32, 32)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert float((hist - 0.1).abs().max()) < 0.005
    flat = u.reshape(64, -1)
    assert float(torch.corrcoef(flat[:8]).fill_diagonal_(0).abs().max()) < 0.1  # neighbouring rows unrelated


def test_a_row_does_not_depend_on_its_batch_or_worker_slice():
    ids = [f"s{i}" for i in range(10)]
    whole, part = CounterStream.for_samples(0, ids), CounterStream.for_samples(0, ids[6:] + ids[2:4])
    for shape in [(3,), (2, 4, 4)]:
        w, p = whole.rand(*shape), part.rand(*shape)
        assert torch.equal(p, torch.cat([w[6:], w[2:4]]))
    batch, world = 12, 3
    full = CounterStream.for_rows(99, torch.arange(batch)).rand(5)
    for rank in range(world):
        mine = CounterStream.for_rows(99, torch.arange(rank, batch, world)).rand(5)
        assert torch.equal(mine, full[rank::world])


def test_worker_slices_solve_the_same_noise_as_the_whole_batch():
    cfg = resolve_config("sem", 16, overrides={"trainer.arch": "small_cnn", "solver.steps": 2, "solver.samples": 2})
    spec = NoiseSpec.from_config(cfg, 16)
    model = build_model("small_cnn", 10, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)
    with frozen(model):
        whole = solve_noise(model, x, y, spec, CounterStream.for_rows(5, torch.arange(6)))
        for rank in range(2):
            rows = torch.arange(rank, 6, 2)
            mine = solve_noise(model, x[rows], y[rows], spec, CounterStream.for_rows(5, rows))
            assert torch.allclose(mine, whole[rows], atol=1e-6)
