"""Victims on real protected data (the bundled digits, CPU scale): protection lowers a standard victim's
clean test accuracy, adversarial training at ρ_a ≥ ρ_u recovers it on EM data (Theorem 3's regime, the
paper's motivation), and R_δu sees EM noise as easy to fit.

The CPU-scale generators (small CNN, tens of steps) are far weaker than the paper's M = 5000; at
ρ_u = 8/255 their noise barely dents a victim on digits, so these tests protect at ρ_u = 16/255 — the
radius of the paper's Table 4. Each dataset is protected once per module.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sem_dist.analysis.robustness import noise_robustness
from sem_dist.config import resolve_config
from sem_dist.perturb.in_memory import protect_arrays
from sem_dist.victims.train import VictimConfig, train_victim

# Every test here asserts on trained victims or generators. Thresholds are set from `python tests/spread.py
# digits_victims` (seeds 0, 1, 2 × this CPU's kernels in fp32, the same in bf16 — `trainer.amp: auto` on a CPU with
# avx512_bf16 or AMX — and the AVX2 set; AMD EPYC with AVX-512 and avx512_bf16, 2026-12-04); the measured range
# of each quantity over those 9 runs is written beside its assertion.
pytestmark = pytest.mark.trained

CPU = torch.device("cpu")
VICTIM = VictimConfig(arch="small_cnn", steps=120, batch_size=64)  # ≈ 5 epochs of digits, crop + flip
EM = {"trainer.arch": "small_cnn", "trainer.steps": 40, "trainer.batch_size": 64, "trainer.lr_step": 10 ** 9,
      "solver.steps": 5, "budget.rho_u": "16/255"}


@pytest.fixture(scope="module")
def em(digits):
    cfg = resolve_config("em", 32, overrides=EM)
    return cfg, protect_arrays(cfg, digits[0], CPU)[0]


@pytest.fixture(scope="module")
def sem(sem_protected_digits):  # the demo's SEM protection, computed once per session (conftest.py)
    return sem_protected_digits[0]


@pytest.fixture(scope="module")
def clean_acc(digits):
    return train_victim(VICTIM, digits[0], digits[1], CPU).test_acc


def test_clean_victim_learns_digits(clean_acc):
    assert clean_acc >= 0.88  # measured 0.911–0.939 (victims train in fp32 whatever the generator's precision)


def test_sem_protection_defeats_standard_training(digits, sem, clean_acc):
    assert np.abs(sem.noise).max() <= 16
    assert train_victim(VICTIM, sem, digits[1], CPU).test_acc < clean_acc - 0.3  # clean − SEM measured 0.38–0.72


def test_adversarial_training_at_rho_u_recovers_em(digits, em, clean_acc):
    _, data = em
    standard = train_victim(VICTIM, data, digits[1], CPU).test_acc
    # Madry training at ρ_a = ρ_u; 2 PGD steps of ρ_a/2 reach the ball's surface and keep the test affordable
    robust = train_victim(dataclasses.replace(VICTIM, adv_rho=16 / 255, adv_steps=2, adv_alpha_div=2.0),
                          data, digits[1], CPU).test_acc
    # EM's standard victim alone moves a lot (0.14–0.66 over seeds, kernels and precisions): compare it with clean
    # data under the same seed (clean − EM measured 0.25–0.79; fp32 alone 0.45–0.67, bf16 seed 0 the 0.25)
    assert standard < clean_acc - 0.2
    assert robust > 0.85 and robust > standard + 0.2  # robust measured 0.903–0.931; robust − standard 0.27–0.78


def test_error_minimizing_noise_is_easy_to_fit(em):
    cfg, data = em  # EM's config: no T, ρ_a = 0, so R_δu is minus the loss of plain training
    clean = data.with_images(data.clean_images(), np.zeros_like(data.noise))
    # R_δu(EM) − R_δu(clean) measured 0.13–0.32
    assert noise_robustness(data, cfg, CPU, steps=20) > noise_robustness(clean, cfg, CPU, steps=20)
