"""trainer.graphs: Algorithm 1's two halves and Algorithm 4's solve run through static buffers (recorded as CUDA
graphs on a GPU). A CPU cannot record a CUDA graph, so these tests run the same functions over the same static
buffers eagerly (``graph_mode`` ``static``: what ``on`` means on a CPU). On a CPU that path runs the same
kernels in the same order as the direct one, so the results must be bitwise equal; what could differ is the
plumbing: keys and images copied into reused buffers, Python constants (learning rate) keying the signature,
a changed batch shape. On a GPU, graph replay runs the recorded kernels again, so it is bitwise equal to the
eager GPU path too, up to kernels that are non-deterministic anyway; ``bench gpu`` measures that difference
(alg4_graphed_max_diff_levels) on the device.
"""
from __future__ import annotations

import pytest
import torch

from sem_dist.config import resolve_config
from sem_dist.perturb.generator import GeneratorTraining
from sem_dist.perturb.methods import get_method
from sem_dist.perturb.noise import KeyedSolver, NoiseSpec, solve_noise
from sem_dist.runtime.device import CapturedCall, graph_mode, trainer_layout
from sem_dist.runtime.rng import CounterStream, row_keys
from sem_dist.training.pgd import frozen

CPU = torch.device("cpu")


def _cfg(method: str, graphs: str, **over):
    return resolve_config(method, 16, overrides={"trainer.arch": "small_cnn", "solver.steps": 2, "solver.samples": 2,
                                                 "attack.steps": 2, "trainer.batch_size": 4, "trainer.graphs": graphs,
                                                 "trainer.lr_step": 2, **over})


def _data(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_graph_mode_resolution_and_validation():
    assert graph_mode("auto", CPU) == "off" and graph_mode("on", CPU) == "static" and graph_mode("off", CPU) == "off"
    assert graph_mode("auto", torch.device("cuda")) == "cuda" and graph_mode("off", torch.device("cuda")) == "off"
    with pytest.raises(ValueError, match="graphs 'yes'"):
        graph_mode("yes", CPU)
    with pytest.raises(ValueError, match="trainer.graphs='yes'"):
        _cfg("sem", "yes")
    assert trainer_layout(_cfg("sem", "on").trainer, CPU, (3, 16, 16))["graphs"] == "static"
    assert trainer_layout(_cfg("sem", "auto").trainer, CPU, (3, 16, 16))["graphs"] == "off"


def test_counter_draws_from_keys_in_a_static_buffer_are_todays_bits():
    # the key tensor is copied into one buffer that every call reuses: each call must draw from its own keys
    call = CapturedCall(lambda keys: CounterStream(keys).rand(3, 5), "on")
    addresses = set()
    for base in (11, 12, 11):
        keys = row_keys(base, torch.arange(1, 7, 2))
        got = call(keys)
        addresses.add(call.buffers[0].data_ptr())
        assert torch.equal(got, CounterStream.for_rows(base, torch.arange(1, 7, 2)).rand(3, 5))
    assert call.mode(CPU) == "static" and len(addresses) == 1


@pytest.mark.parametrize("method", ["sem", "rem"])
def test_static_buffer_solver_gives_the_eager_noise_bitwise(method):
    cfg = _cfg(method, "on")
    spec = NoiseSpec.from_config(cfg, 16)
    model = get_method(cfg, 10, 3, 16, CPU).model
    solver = KeyedSolver(model, spec, "on")
    for n, seed in ((4, 0), (4, 1), (3, 2)):  # the buffers are refilled, then re-made for another batch shape
        x, y = _data(n, seed)
        ids = [f"s{seed}-{i}" for i in range(n)]
        got = solver(x, y, CounterStream.for_samples(cfg.seed, ids).keys)
        with frozen(model):
            want = solve_noise(model, x, y, spec, CounterStream.for_samples(cfg.seed, ids))
        assert torch.equal(got, want)
        assert got.abs().max() <= cfg.budget.rho_u + 1e-7 and got.abs().max() > 0


def test_methods_perturb_goes_through_the_keyed_solver():
    cfg = _cfg("sem", "on")
    static, direct = get_method(cfg, 10, 3, 16, CPU), get_method(_cfg("sem", "off"), 10, 3, 16, CPU)
    direct.model.load_state_dict(static.model.state_dict())
    x, y = _data()
    ids = ["a", "b", "c", "d"]
    assert static.solver._solve.mode(CPU) == "static" and direct.solver._solve.mode(CPU) == "off"
    assert torch.equal(static.perturb(x, y, ids), direct.perturb(x, y, ids))


@pytest.mark.parametrize("method", ["sem", "rem"])
def test_static_buffer_steps_train_the_same_generator_bitwise(method):
    # three steps across a learning-rate change (lr_step 2): the update's signature changes with the lr
    runs = {g: GeneratorTraining.create(_cfg(method, g), 10, 3, 16, CPU) for g in ("off", "on")}
    assert runs["on"]._inputs.mode(CPU) == "static" and runs["off"]._inputs.mode(CPU) == "off"
    for step in range(3):
        x, y = _data(4, step)
        stats = {g: r.run_step(x, y) for g, r in runs.items()}
        assert stats["on"] == stats["off"]
    assert dict(runs["on"]._update.signature[1]) == {"loss_scale": 0.25, "lr": pytest.approx(0.01)}
    on, off = runs["on"].state_dict(), runs["off"].state_dict()
    for name, tensor in off["model"].items():
        assert torch.equal(on["model"][name], tensor), name
    momentum = [s["momentum_buffer"] for s in on["optimizer"]["state"].values()]
    assert momentum and all(torch.equal(a, s["momentum_buffer"])
                            for a, s in zip(momentum, off["optimizer"]["state"].values()))


def test_static_buffer_step_of_a_workers_rows_matches_the_eager_one():
    # worker 1 of 2 on a global batch of 4: keys for global rows 1 and 3, loss scaled by W/B
    runs = {g: GeneratorTraining.create(_cfg("sem", g), 10, 3, 16, CPU) for g in ("off", "on")}
    x, y = _data(2)
    assert runs["on"].run_step(x, y, rank=1, world=2) == runs["off"].run_step(x, y, rank=1, world=2)
    for name, tensor in runs["off"].model.state_dict().items():
        assert torch.equal(runs["on"].model.state_dict()[name], tensor), name
