"""The Algorithm-1 step profile accounts for the step's time (timings themselves belong to benchmarks)."""
from __future__ import annotations

import torch

from sem_dist.bench.alg1 import profiled_steps
from sem_dist.bench.profile import PARTS
from sem_dist.config import resolve_config
from sem_dist.perturb.generator import GeneratorTraining
from sem_dist.rng import CounterStream


def test_profile_parts_add_up_to_the_step_time_and_leave_the_step_unchanged():
    over = {"trainer.arch": "small_cnn", "trainer.batch_size": 8, "solver.steps": 2, "solver.samples": 2,
            "attack.steps": 2}
    cfg = resolve_config("sem", 16, overrides=over)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    plain, timed = (GeneratorTraining.create(cfg, 10, 3, 16, torch.device("cpu")) for _ in range(2))
    plain.run_step(x, y)
    plain.run_step(x, y)
    times, profile = profiled_steps(timed, x, y, 2)
    parts = profile.result(2)
    assert set(parts) == {f"t_{p}_s" for p in PARTS} and all(v > 0 for v in parts.values()), parts
    assert abs(profile.total() - sum(times)) <= 0.1 * sum(times), (parts, times)
    for a, b in zip(plain.model.state_dict().values(), timed.model.state_dict().values()):
        assert torch.equal(a, b)  # instrumenting changes nothing the step computes
    # the wrappers are gone afterwards
    assert CounterStream.rand.__name__ == "rand" and not hasattr(CounterStream.rand, "__wrapped__")
