"""Algorithm 1 (training, checkpoints, resume) and Algorithm 4 (regeneration, int8 storage)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sem_dist.config import resolve_config
from sem_dist.data.arrays import ArrayDataset
from sem_dist.perturb.algorithm4 import apply_noise, quantize
from sem_dist.perturb.generator import CHECKPOINT_NAME, load_checkpoint, train_generator
from sem_dist.perturb.in_memory import protect_arrays, regenerate_all
from sem_dist.perturb.methods import get_method
from sem_dist.training.sampling import StepSampler
from sem_dist.victims.train import VictimConfig, train_victim

CPU = torch.device("cpu")
TINY = {"trainer.arch": "small_cnn", "trainer.batch_size": 16, "trainer.steps": 6, "trainer.checkpoint_every": 2,
        "solver.steps": 2, "solver.samples": 2, "attack.steps": 2}


def _data(n=37, c=3, side=32, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, c, side, side), dtype=np.uint8)
    return ArrayDataset([f"img-{i}" for i in range(n)], images, rng.integers(0, 10, n), [str(i) for i in range(10)])


def test_sampler_covers_every_sample_each_epoch_without_dropping():
    s = StepSampler(n=10, batch_size=4, seed=0)
    seen = torch.cat([s.indices(i) for i in range(5)])  # 20 positions = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(StepSampler(10, 4, 0).indices(3), s.indices(3))  # a function of (seed, step)


def test_regeneration_covers_a_dataset_not_a_multiple_of_the_batch():
    data = _data(37)
    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 0})
    method = get_method(cfg, 10, 3, 32, CPU)
    by_16 = regenerate_all(method, data, CPU, 16)
    by_37 = regenerate_all(method, data, CPU, 37)
    assert by_16.shape == data.images.shape and by_16.dtype == np.int8
    assert (np.abs(by_16).reshape(37, -1).max(1) > 0).all()  # every sample got noise, the last 5 included
    assert np.abs(by_16).max() <= 8
    np.testing.assert_array_equal(by_16, by_37)  # a sample's noise does not depend on its batch


def test_int8_noise_reconstructs_the_protected_image_exactly():
    data = _data(8)
    x = torch.from_numpy(data.images).float() / 255
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * (8 / 255)
    delta = (x + delta).clamp(0, 1) - x  # as the solver's projection leaves it
    noise = quantize(delta, 8 / 255).numpy()
    protected = apply_noise(data.images, noise)
    np.testing.assert_array_equal(protected, np.rint((x + delta).numpy() * 255).astype(np.uint8))
    np.testing.assert_array_equal(data.with_images(protected, noise).clean_images(), data.images)
    assert np.abs(noise).max() <= 8


def test_quantisation_never_exceeds_a_budget_between_grey_levels():
    delta = torch.full((1, 1, 2, 2), 0.03)  # 7.65 grey levels: rounding up would leave the ball
    assert quantize(delta, 0.03).max().item() == 7


def test_resumed_run_continues_from_its_checkpoint(tmp_path):
    data = _data(40)
    cfg = resolve_config("sem", 32, overrides=TINY)
    full = train_generator(cfg, data, 10, 3, 32, CPU)
    steps = []
    train_generator(cfg, data, 10, 3, 32, CPU, checkpoint_dir=tmp_path, stop_after=3,
                    progress=lambda s: steps.append(s["step"]))
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 2  # checkpoint_every=2: step 3 is lost
    resumed = train_generator(cfg, data, 10, 3, 32, CPU, checkpoint_dir=tmp_path, resume=True,
                              progress=lambda s: steps.append(s["step"]))
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # continued at step 3, not from 0
    assert resumed.step == 6 and load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 6
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)  # same trajectory as never stopping


def test_resume_refuses_a_checkpoint_from_another_configuration(tmp_path):
    data = _data(20)
    train_generator(resolve_config("sem", 32, overrides=TINY), data, 10, 3, 32, CPU, checkpoint_dir=tmp_path)
    other = resolve_config("sem", 32, overrides={**TINY, "budget.rho_u": "16/255"})
    with pytest.raises(ValueError, match="budget"):
        train_generator(other, data, 10, 3, 32, CPU, checkpoint_dir=tmp_path, resume=True)


def test_resume_refuses_a_checkpoint_drawn_with_another_random_scheme(tmp_path):
    data = _data(20)
    cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 2})
    train_generator(cfg, data, 10, 3, 32, CPU, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    state["rng"]["scheme"] = "blake2b(seed, step)"  # what sem_dist wrote before counter-based draws
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    longer = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 2})
    with pytest.raises(ValueError, match="random scheme 'blake2b"):
        train_generator(longer, data, 10, 3, 32, CPU, checkpoint_dir=tmp_path, resume=True)


def test_same_seed_same_noise_and_another_seed_other_noise():
    data = _data(12)

    def run(seed):
        cfg = resolve_config("sem", 32, overrides={**TINY, "trainer.steps": 2})
        cfg.seed = seed
        return protect_arrays(cfg, data, CPU)[0].noise

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.3


@pytest.mark.trained
def test_sem_protected_digits_are_unlearnable(digits, sem_protected_digits):
    train, test = digits
    protected, cfg = sem_protected_digits
    assert np.abs(protected.noise).max() <= round(255 * cfg.budget.rho_u)
    victim = VictimConfig(arch="small_cnn", epochs=12, batch_size=64)
    clean = train_victim(victim, train, test, CPU).test_acc
    prot = train_victim(victim, protected, test, CPU).test_acc
    # tests/spread.py digits_victims (seeds 0–2 × native fp32 / native bf16 / AVX2): clean 0.956–0.967, clean − SEM
    # 0.46–0.75 (bf16 0.46–0.71)
    assert clean >= 0.9
    assert clean - prot >= 0.40, f"clean {clean:.3f} vs protected {prot:.3f}"
