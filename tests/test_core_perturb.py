"""The perturbation math: transforms, PGD, the batched δ^u solver (Alg. 1 lines 2–9)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sem_dist.config import parse_fraction, resolve_config
from sem_dist.models import build_model
from sem_dist.perturb.noise import NoiseSpec, RepeatStream, noise_gradient, solve_noise
from sem_dist.runtime.rng import BatchStream, CounterStream, make_generator, uniform_ball
from sem_dist.training.pgd import frozen, pgd
from sem_dist.training.transforms import crop_flip, get_transform, resized_crop_flip

RHO = 8 / 255


def _setup(method="sem", n=6, c=3, side=32, **over):
    cfg = resolve_config(method, side, overrides={"trainer.arch": "small_cnn", **over})
    model = build_model("small_cnn", 10, c, seed=0)
    x = torch.rand(n, c, side, side, generator=make_generator(1))
    y = torch.arange(n) % 10
    return cfg, model, x, y, NoiseSpec.from_config(cfg, side)


def _stream(n, seed=3):
    return BatchStream(make_generator(seed), n)


def test_fraction_parsing_accepts_paper_notation_and_rejects_garbage():
    assert parse_fraction("8/255") == pytest.approx(8 / 255)
    assert parse_fraction("0.5") == 0.5
    with pytest.raises(ValueError, match="8/255"):
        parse_fraction("eight")


def test_crop_flip_known_answers_and_gradient():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4).requires_grad_(True)
    # offset == padding (u maps to the middle of 2p+1 positions) and no flip → identity
    centre = torch.tensor([[0.5, 0.5, 0.9], [0.5, 0.5, 0.1]])
    out = crop_flip(x, centre, padding=2)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].flip(-1))  # u[2] < 0.5 flips horizontally
    # top-left offset: the image shifts down/right by the padding, zeros enter
    shifted = crop_flip(x, torch.tensor([[0.0, 0.0, 0.9]] * 2), padding=1)
    assert torch.equal(shifted[0, 0, 1:, 1:], x[0, 0, :3, :3])
    assert shifted[0, 0, 0].abs().sum() == 0
    shifted.sum().backward()
    assert x.grad is not None and x.grad[0, 0, :3, :3].eq(1).all() and x.grad[0, 0, 3].eq(0).all()


def test_crop_flip_gradient_is_the_adjoint_of_the_crop():
    # the hand-written backward (one gather, summed over the R draws per image) against finite differences
    x = torch.rand(2, 2, 5, 6, dtype=torch.float64, generator=make_generator(4), requires_grad=True)
    u = torch.rand(6, 3, generator=make_generator(5))  # R = 3 draws per image, flips and offsets mixed
    assert (u[:, 2] < 0.5).any() and (u[:, 2] >= 0.5).any()
    assert torch.autograd.gradcheck(lambda v: crop_flip(v, u, padding=2), (x,))


def test_resized_crop_full_area_is_identity_and_transforms_resolve_by_size():
    x = torch.rand(3, 3, 16, 16)
    u = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.9]] * 3)  # area 1, ratio 1, centred, no flip
    assert torch.allclose(resized_crop_flip(x, u, scale=(1.0, 1.0)), x, atol=1e-5)
    assert get_transform("auto", 32).name == "crop_flip"
    assert get_transform("auto", 224).name == "resized_crop_flip"
    with pytest.raises(ValueError, match="unknown transform"):
        get_transform("rotate", 32)


@pytest.mark.parametrize("name", ["crop_flip", "resized_crop_flip", "none"])
def test_a_transform_of_r_draws_per_image_equals_one_of_r_copies(name):
    t = get_transform(name, 16)
    x = torch.rand(3, 2, 16, 16, generator=make_generator(2), requires_grad=True)
    u = torch.rand(6, t.n_params, generator=make_generator(3))
    once = t(x, u)  # two draws per image, x not copied first
    copies = t(x.repeat_interleave(2, dim=0), u)
    assert once.shape == (6, 2, 16, 16) and torch.equal(once, copies)
    (g_once,) = torch.autograd.grad(once.square().sum(), x)
    (g_copies,) = torch.autograd.grad(copies.square().sum(), x)
    assert torch.allclose(g_once, g_copies, atol=1e-6)


def test_random_perturbation_is_uniform_in_the_ball():
    d = uniform_ball(_stream(64), 4 / 255, 3, 32, 32)
    assert d.abs().max() <= 4 / 255
    assert d.mean().abs() < 1e-4
    assert d.var().item() == pytest.approx((4 / 255) ** 2 / 3, rel=0.02)  # Var U(−ρ, ρ) = ρ²/3
    assert (d > 3.8 / 255).any() and (d < -3.8 / 255).any()  # fills the ball, not a shell


def test_pgd_ascent_and_targeted_descent_respect_bounds():
    _, model, x, y, _ = _setup()
    with frozen(model):
        base = F.cross_entropy(model(x), y).item()
        d = pgd(model, x, y, RHO, RHO / 4, 8, stream=_stream(len(x)))
        assert d.abs().max() <= RHO + 1e-7 and ((x + d) >= 0).all() and ((x + d) <= 1).all()
        assert F.cross_entropy(model(x + d), y).item() > base
        target = (y + 1) % 10
        t = pgd(model, x, target, RHO, RHO / 4, 8, maximize=False)
        assert F.cross_entropy(model(x + t), target).item() < F.cross_entropy(model(x), target).item()
    assert all(p.requires_grad for p in model.parameters())  # frozen() restores


@pytest.mark.parametrize("method", ["sem", "rem", "rem-theta", "em"])
def test_noise_within_budget_and_pixels_valid_after_every_step(method):
    cfg, model, x, y, spec = _setup(method, **{"solver.samples": 2, "attack.steps": 2})
    x[0] = 0.0  # saturated pixels: the projection must keep x + δ inside [0, 1]
    x[1] = 1.0
    with frozen(model):
        for k in range(1, 4):
            d = solve_noise(model, x, y, dataclasses.replace(spec, steps=k), _stream(len(x)))
            assert d.abs().max() <= RHO + 1e-7
            assert ((x + d) >= 0).all() and ((x + d) <= 1).all()
            assert d.abs().max() > 0.5 * RHO  # it actually moved


@pytest.mark.parametrize("method", ["sem", "rem"])
def test_batched_gradient_equals_looped_average_over_j(method):
    # an fp32 identity: bf16 passes over 12 rows and over 4 round differently (trainer.amp auto picks bf16 on CPUs
    # with bf16 hardware)
    cfg, model, x, y, spec = _setup(method, n=4, **{"solver.samples": 3, "attack.steps": 2, "trainer.amp": "off"})
    j = spec.samples
    delta = uniform_ball(_stream(len(x), 9), RHO, *x.shape[1:])

    class Replay:  # hands out recorded draws so the looped version sees exactly the same (t_j, δ_j)
        def __init__(self, draws):
            self.draws, self.n, self.device = list(draws), None, x.device

        def rand(self, *shape):
            return self.draws.pop(0)

    class Recorder(BatchStream):
        def __init__(self, *a):
            super().__init__(*a)
            self.log = []

        def rand(self, *shape):
            r = super().rand(*shape)
            self.log.append(r)
            return r

    rec = Recorder(make_generator(5), len(x))
    with frozen(model):
        g_batched = noise_gradient(model, x, y, delta, spec, RepeatStream(rec, j))
        grads = []
        for jj in range(j):  # one draw at a time: the per-j rows of every recorded draw
            draws = [r[:, jj] for r in rec.log]  # recorded as (B, J, ...)
            replay = Replay(draws)
            replay.n = len(x)
            one = dataclasses.replace(spec, samples=1)
            grads.append(noise_gradient(model, x, y, delta, one, replay))
    assert torch.allclose(g_batched, torch.stack(grads).mean(0), atol=1e-6, rtol=1e-4)


def test_sem_and_rem_differ_only_in_the_inner_perturbation():
    sem, rem = resolve_config("sem", 32).to_dict(), resolve_config("rem", 32).to_dict()
    diff = {(s, k) for s in sem if isinstance(sem[s], dict) for k in sem[s] if sem[s][k] != rem[s].get(k)}
    assert diff == {("solver", "inner")}
    assert {sem["solver"]["inner"], rem["solver"]["inner"]} == {"random", "adversarial"}
    # with zero inner radius both solvers take exactly the same path
    over = {"budget.rho_a": 0, "budget.rho_r": 0, "solver.samples": 2}
    _, model, x, y, s_spec = _setup("sem", **over)
    r_spec = NoiseSpec.from_config(resolve_config("rem", 32, overrides={"trainer.arch": "small_cnn", **over}), 32)
    with frozen(model):
        d_sem = solve_noise(model, x, y, s_spec, _stream(len(x)))
        d_rem = solve_noise(model, x, y, r_spec, _stream(len(x)))
    assert torch.equal(d_sem, d_rem)


def test_noise_is_independent_of_the_rest_of_the_batch():
    _, model, x, y, spec = _setup(n=8, **{"solver.samples": 2})
    ids = [f"s{i}" for i in range(8)]
    with frozen(model):
        whole = solve_noise(model, x, y, spec, CounterStream.for_samples(0, ids))
        part = solve_noise(model, x[3:6], y[3:6], spec, CounterStream.for_samples(0, ids[3:6]))
    assert torch.allclose(whole[3:6], part, atol=1e-6)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="rho_u"):
        resolve_config("sem", 32, overrides={"budget.rho_u": 2})
    with pytest.raises(ValueError, match="unknown method"):
        resolve_config("nope", 32)
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config("sem", 32, overrides={"solver.bogus": 1})
    large = resolve_config("sem", 224)
    assert (large.solver.steps, large.solver.samples, large.trainer.steps) == (7, 4, 3000)
    assert large.alpha_u == pytest.approx(large.budget.rho_u / 4)
