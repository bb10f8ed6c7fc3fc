"""The Algorithm-1 step profile accounts for the step's time (timings themselves belong to benchmarks)."""
from __future__ import annotations

import time

import torch

from sem_dist.bench.alg1 import profiled_steps
from sem_dist.bench.profile import PARTS
from sem_dist.config import resolve_config
from sem_dist.perturb.generator import GeneratorTraining
from sem_dist.runtime.rng import CounterStream


def test_profile_parts_add_up_to_the_step_time_and_leave_the_step_unchanged():
    # big enough that the passes, not Python's bookkeeping between the timed sections, make up the step
    over = {"trainer.arch": "small_cnn", "trainer.batch_size": 32, "solver.steps": 2, "solver.samples": 2,
            "attack.steps": 2}
    cfg = resolve_config("sem", 32, overrides=over)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    plain, timed = (GeneratorTraining.create(cfg, 10, 3, 32, torch.device("cpu")) for _ in range(2))
    plain.run_step(x, y)
    plain.run_step(x, y)
    # CPU time of this process: what the parts account for, whatever else the machine is running
    times, profile = profiled_steps(timed, x, y, 2, clock=time.process_time)
    parts = profile.result(2)
    assert set(parts) == {f"t_{p}_s" for p in PARTS} and all(v > 0 for v in parts.values()), parts
    assert abs(profile.total() - sum(times)) <= 0.1 * sum(times), (parts, times)
    for a, b in zip(plain.model.state_dict().values(), timed.model.state_dict().values()):
        assert torch.equal(a, b)  # instrumenting changes nothing the step computes
    # the wrappers are gone afterwards
    assert CounterStream.rand.__name__ == "rand" and not hasattr(CounterStream.rand, "__wrapped__")


def test_bench_alg1_lists_the_steps_heaviest_operators_in_both_precisions():
    from sem_dist.bench import alg1

    result = alg1.run(quick=True, verbose=False, batch_size=8, image_side=16, reps=1, no_rem=True, ku=1, ka=1, ops=4)
    ops = result["ops"]
    assert len(ops) == 4 and all(r["op"].startswith("aten::") for r in ops), ops
    # an operator may run in one precision only: without bf16 hardware (the AVX2 kernel set) bf16 convolutions
    # are ATen's own (_slow_conv2d), not oneDNN's
    assert all(max(r["fp32_ms"], r["bf16_ms"]) > 0 for r in ops), ops
    assert all(r["speedup"] == (round(r["fp32_ms"] / r["bf16_ms"], 2) if r["bf16_ms"] else None) for r in ops)
    # a SEM step is mostly convolutions and their backward (input gradients)
    assert "conv" in ops[0]["op"], ops
    assert ops == sorted(ops, key=lambda r: -max(r["fp32_ms"], r["bf16_ms"]))
    for precision, total in result["ops_total_ms"].items():
        assert sum(r[f"{precision}_ms"] for r in ops) <= total + 0.1, (precision, total, ops)
