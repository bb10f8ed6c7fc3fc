"""REM's inner maximisers (Table 14): one signature, ℓ∞ and pixel bounds, ascent, per-sample independence."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sem_dist.config import resolve_config
from sem_dist.models import build_model
from sem_dist.perturb.attacks import ATTACKS, apgd_checkpoints, get_attack
from sem_dist.perturb.noise import NoiseSpec, solve_noise
from sem_dist.runtime.rng import CounterStream, make_generator
from sem_dist.training.pgd import frozen

RHO = 8 / 255


@pytest.fixture(scope="module")
def setup():
    model = build_model("small_cnn", 10, 3, seed=0)
    x = torch.rand(6, 3, 16, 16, generator=make_generator(1))
    x[0, :, :4] = 0.0  # pixels at the range ends: the projection must keep x + δ in [0, 1]
    x[1, :, :4] = 1.0
    return model, x, torch.arange(6) % 10


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_bounds_ascent_and_per_sample_independence(name, setup):
    model, x, y = setup
    attack = get_attack(name)
    ids = [str(i) for i in range(len(x))]
    with frozen(model):
        d = attack(model, x, y, RHO, RHO / 4, 5, stream=CounterStream.for_samples(0, ids))
        assert d.abs().max() <= RHO + 1e-7 and (x + d).min() >= 0 and (x + d).max() <= 1
        if name == "tpgd":  # TRADES ascends the divergence from the clean prediction
            clean = F.log_softmax(model(x), 1)
            gain = F.kl_div(F.log_softmax(model(x + d), 1), clean, reduction="sum", log_target=True)
        else:
            gain = F.cross_entropy(model(x + d), y) - F.cross_entropy(model(x), y)
        assert gain > 0
        # a sample's δ does not depend on the rest of the batch (noise stays independent of batching)
        alone = attack(model, x[2:3], y[2:3], RHO, RHO / 4, 5, stream=CounterStream.for_samples(0, ids[2:3]))
        assert torch.allclose(alone, d[2:3], atol=1e-6)
        assert attack(model, x, y, RHO, RHO / 4, 0).abs().max() == 0


def test_apgd_checkpoints_follow_croce_and_hein():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10)[-1] == 10


def test_rem_inner_maximiser_is_selected_by_config(setup):
    model, x, y = setup
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        get_attack("cw")
    for algorithm in ("fgsm", "tpgd", "apgd"):
        cfg = resolve_config("rem", 16, overrides={"attack.algorithm": algorithm, "solver.steps": 1,
                                                   "solver.samples": 2, "attack.steps": 2})
        spec = NoiseSpec.from_config(cfg, 16)
        assert spec.attack is ATTACKS[algorithm]
        with frozen(model):
            d = solve_noise(model, x, y, spec, CounterStream.for_samples(0, [str(i) for i in range(len(x))]))
        assert d.abs().max() <= cfg.budget.rho_u + 1e-7
