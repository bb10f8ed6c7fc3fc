"""The robustness terms of Definitions 1 and 2 (Eq. 8 and 9), computed by Algorithms 2 and 3.

- R_θ, robustness of a fixed surrogate θ (Eq. 8): θ stays fixed; for each of M minibatches a fresh
  δ^u is solved (K_u signed steps from a random start, gradient averaged over J draws of t_j and a PGD
  δ^a_j on t_j(x+δ^u)), then t ~ T, δ^a = PGD(t(x+δ^u)), and the loss ℓ(f_θ(t(x+δ^u)+δ^a), y) is
  accumulated. A robust θ keeps that worst-case loss low, so R_θ is high.
- R_δu, robustness of fixed defensive noise δ^u (Eq. 9): θ is re-initialised and trained for M steps
  with Madry adversarial training on t(x+δ^u) (PGD δ^a, radius ρ_a), accumulating the training loss.

Choices where the paper is ambiguous (see docs/evaluation.md):
1. The paper's algorithm titles are swapped relative to its definitions: "Algorithm 2 (R_θ)" fixes the
   noise and trains θ, which solves Eq. 9 (θ updateable), and "Algorithm 3 (R_δu)" fixes θ and solves
   δ^u, which is Eq. 8. We follow the definitions: R_θ by Algorithm 3's procedure, R_δu by Algorithm 2's.
2. Definitions write −max_δa min_x; the algorithms compute min-then-max (REM's Eq. 12 order, the only
   computable one with PGD). We follow the algorithms.
3. The algorithms sum ℓ over M steps without the definitions' minus sign. We report
   R = −(1/M) Σ ℓ: the definitions' sign, and a mean so values compare across M.
4. M: R_θ defaults to one pass over the dataset (⌈N/B⌉ minibatches: each sample's worst case counted
   once — R_θ is an expectation over the data and nothing is trained); R_δu defaults to Algorithm 1's
   own M (trainer.steps), the training budget the surrogate itself had.
5. R_δu's training uses the victim trainer (``victims.train``: SGD with the surrogate's lr, momentum and
   weight decay, ×0.1 at 40%/80%) and counts the loss of each update's own forward pass, i.e. just before
   the step rather than after it as Algorithm 2 line 7 literally reads; the two differ by one SGD step
   and the former is the quantity min_θ actually minimises.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..perturb.noise import NoiseSpec, solve_noise
from ..runtime.device import resolve_amp
from ..runtime.rng import BatchStream, make_generator, step_seed
from ..training.pgd import frozen, pgd
from ..training.sampling import StepSampler
from ..victims.train import VictimConfig, train_victim


def term_steps(cfg: ProtectConfig, n_train: int, theta_steps: int | None = None,
               delta_steps: int | None = None) -> tuple[int, int]:
    """M for R_θ and for R_δu: the given values, else one pass over the data and Algorithm 1's M."""
    m_theta = math.ceil(n_train / min(cfg.trainer.batch_size, n_train)) if theta_steps is None else int(theta_steps)
    m_delta = cfg.trainer.steps if delta_steps is None else int(delta_steps)
    for name, m in (("R_θ", m_theta), ("R_δu", m_delta)):
        if m < 1:
            raise ValueError(f"{name} needs at least one step (M >= 1), got {m}")
    return m_theta, m_delta


def surrogate_robustness(model: nn.Module, clean: ArrayDataset, cfg: ProtectConfig, device: torch.device,
                         steps: int | None = None, seed: int = 0,
                         progress: Callable[[int], None] | None = None) -> float:
    """R_θ (Definition 1) of the fixed surrogate ``model`` on the clean training set ``clean``.

    Radii, step sizes, K_u, J, K_a, T and the batch size come from ``cfg``; the noise-side inner
    perturbation is PGD whatever ``cfg``'s method (Algorithm 3, line 7). ``steps`` is M (default: one
    pass over the data); ``progress`` gets the number of steps done.
    """
    spec = dataclasses.replace(NoiseSpec.from_config(cfg, clean.image_side), inner="adversarial")
    m = term_steps(cfg, len(clean), theta_steps=steps)[0]
    sampler = StepSampler(len(clean), min(cfg.trainer.batch_size, len(clean)), seed)
    total = 0.0
    with frozen(model):
        for step in range(m):
            x, y = clean.batch(sampler.indices(step))
            x, y = x.to(device), y.to(device)
            stream = BatchStream(make_generator(step_seed(seed, step, purpose="r_theta"), device), len(y))
            delta_u = solve_noise(model, x, y, spec, stream)  # lines 4–12: min over δ^u of E_t max δ^a
            xt = spec.transform.sample(x + delta_u, stream)  # line 13
            xa = xt + pgd(model, xt, y, cfg.budget.rho_a, cfg.alpha_a, cfg.attack.steps,  # line 14
                          stream=stream if cfg.attack.random_start else None, amp=spec.amp_on(xt))
            with torch.no_grad():
                total += float(F.cross_entropy(model(xa), y))  # line 15
            if progress is not None:
                progress(step + 1)
    return -total / m


def noise_robustness(protected: ArrayDataset, cfg: ProtectConfig, device: torch.device, steps: int | None = None,
                     seed: int = 0, progress: Callable[[int], None] | None = None) -> float:
    """R_δu (Definition 2) of the noise carried by ``protected`` (images x + δ^u).

    A fresh ``cfg.trainer.arch`` is adversarially trained on it (ρ_a, α_a, K_a from ``cfg``) for
    ``steps`` = M steps (default ``cfg.trainer.steps``); R_δu is minus the mean training loss.
    """
    t = cfg.trainer
    m = term_steps(cfg, len(protected), delta_steps=steps)[1]
    victim = VictimConfig(arch=t.arch, steps=m, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                          weight_decay=t.weight_decay, adv_rho=cfg.budget.rho_a, adv_steps=cfg.attack.steps,
                          adv_alpha_div=cfg.attack.alpha_div, transform=cfg.solver.transform, seed=seed,
                          eval_every=m, amp=resolve_amp(t.amp, device))  # eval_every=M: no learning curve, one point at the end
    result = train_victim(victim, protected, None, device,
                          None if progress is None else (lambda stats: progress(stats["step"])))
    return -result.mean_loss
