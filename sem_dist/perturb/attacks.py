"""Inner maximisers for REM's noise-side perturbation (Table 14), behind one signature:

``attack(model, x, labels, rho, alpha, steps, *, stream=None, amp=False) -> δ`` with ‖δ‖∞ ≤ ρ,
x + δ ∈ [0, 1]; ``amp`` runs the passes under bf16 autocast with fp32 losses and gradient signs.

Call them on a frozen model in eval mode (``pgd.frozen``): every sample's δ then depends on that
sample (and its row of ``stream``) alone, which keeps noise independent of batching.

The paper ran FGSM, TPGD and APGD from torchattacks. We implement them here instead because
torchattacks (3.5.1, and every release back to 3.3) pins ``requests~=2.25.1``, which cannot be
installed next to ``ray[default]`` (its google-api-core needs requests ≥ 2.33); and its TPGD/APGD draw
random starts from torch's global RNG, which would break per-sample seeding. Semantics follow the
attacks' papers; where an attack has no use for an argument of the shared signature, its docstring says so.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.rng import BatchStream, make_generator, uniform_ball
from ..training.pgd import logits_of, pgd, project

TRADES_START = 1e-3  # TRADES' random start scale (Zhang et al. 2019 use 0.001·N(0, 1))
APGD_MOMENTUM = 0.75  # Croce & Hein 2020, α in the momentum update
APGD_RHO = 0.75  # Croce & Hein 2020, ρ in condition 1 of the step-size schedule


def fgsm(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rho: float, alpha: float, steps: int,
         *, stream=None, amp: bool = False) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015): one signed-gradient ascent step of size ρ from δ = 0.

    FGSM has no step size, iteration count or random start: ``alpha`` and ``stream`` are unused and
    ``steps`` only switches it off when ≤ 0 (as for the other attacks).
    """
    return pgd(model, x, labels, rho, rho, min(steps, 1), amp=amp)


def tpgd(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rho: float, alpha: float, steps: int,
         *, stream=None, amp: bool = False) -> torch.Tensor:
    """TRADES' PGD (Zhang et al. 2019): ascend KL(f(x) ‖ f(x + δ)); ``labels`` are unused.

    The KL gradient vanishes at δ = 0, so the start is a small random point: uniform in ±0.001 (TRADES
    draws 0.001·N(0, 1); a uniform draw from our streams serves the same purpose). Without a ``stream``
    the start comes from a fixed-seed generator, so the result is deterministic but depends on the batch.
    """
    x = x.detach()
    if steps <= 0 or rho <= 0:
        return torch.zeros_like(x)
    if stream is None:
        stream = BatchStream(make_generator(0, x.device), x.shape[0])
    with torch.no_grad():
        clean = F.log_softmax(logits_of(model, x, amp), dim=1)
    delta = project(x, uniform_ball(stream, min(TRADES_START, rho), *x.shape[1:]).to(x.dtype), rho)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.kl_div(F.log_softmax(logits_of(model, x + delta, amp), dim=1), clean, reduction="sum",
                        log_target=True)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = project(x, delta.detach() + alpha * grad.sign(), rho)
    return delta.detach()


def apgd_checkpoints(steps: int) -> list[int]:
    """APGD's step-size checkpoints w_j = ⌈p_j·N⌉ with p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    ws = {math.ceil(round(q * steps, 9)) for q in p[1:]}  # round: 0.57·100 must not become 58
    return sorted(w for w in ws if 0 < w <= steps)


def apgd(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rho: float, alpha: float, steps: int,
         *, stream=None, amp: bool = False) -> torch.Tensor:
    """APGD-CE (Croce & Hein 2020): momentum PGD whose per-sample step size η starts at 2ρ and halves at
    checkpoints where progress stalled, restarting from the best point; returns the highest-loss δ seen.

    APGD sets its own step size, so ``alpha`` is unused. A ``stream`` gives a uniform random start in the
    ball (``None`` starts at δ = 0). Unlike torchattacks' APGD, which returns the clean input for samples
    it fails to misclassify, this returns each sample's loss maximiser, which is what REM's inner
    maximisation needs.
    """
    x = x.detach()
    if steps <= 0 or rho <= 0:
        return torch.zeros_like(x)
    n = x.shape[0]
    per_sample = (n,) + (1,) * (x.dim() - 1)

    def loss_and_grad(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = d.detach().requires_grad_(True)
        loss = F.cross_entropy(logits_of(model, x + d, amp), labels, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), d)
        return loss.detach(), g

    start = torch.zeros_like(x) if stream is None else uniform_ball(stream, rho, *x.shape[1:]).to(x.dtype)
    delta = project(x, start, rho)
    loss, grad = loss_and_grad(delta)
    best_delta, best_loss, best_grad = delta.clone(), loss.clone(), grad.clone()
    previous = delta
    eta = torch.full(per_sample, 2.0 * rho, device=x.device, dtype=x.dtype)
    checkpoints = apgd_checkpoints(steps)
    last_checkpoint = 0
    increases = torch.zeros(n, device=x.device)
    best_at_checkpoint = best_loss.clone()
    halved_at_checkpoint = torch.zeros(n, dtype=torch.bool, device=x.device)
    for k in range(steps):
        z = project(x, delta + eta * grad.sign(), rho)
        if k == 0:
            new = z
        else:
            new = project(x, delta + APGD_MOMENTUM * (z - delta) + (1 - APGD_MOMENTUM) * (delta - previous), rho)
        previous, delta = delta, new
        new_loss, grad = loss_and_grad(delta)
        increases += (new_loss > loss).float()
        loss = new_loss
        better = loss > best_loss
        best_delta[better], best_loss[better], best_grad[better] = delta[better], loss[better], grad[better]
        if k + 1 in checkpoints:
            since = k + 1 - last_checkpoint
            stalled = increases < APGD_RHO * since  # condition 1
            stalled |= ~halved_at_checkpoint & (best_loss <= best_at_checkpoint)  # condition 2
            eta[stalled] /= 2.0
            # restart the halved samples from their best point, without momentum
            delta[stalled] = best_delta[stalled]
            previous[stalled] = best_delta[stalled]
            grad[stalled] = best_grad[stalled]
            loss[stalled] = best_loss[stalled]
            halved_at_checkpoint = stalled
            best_at_checkpoint = best_loss.clone()
            increases.zero_()
            last_checkpoint = k + 1
    return best_delta


ATTACKS: dict[str, Callable] = {"pgd": pgd, "fgsm": fgsm, "tpgd": tpgd, "apgd": apgd}


def get_attack(name: str) -> Callable:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(sorted(ATTACKS))}") from None
