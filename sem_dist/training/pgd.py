"""ℓ∞ projected gradient descent/ascent on inputs in [0,1] pixel space."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.device import autocast
from ..runtime.rng import uniform_ball


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameter gradients off, for input-gradient passes; restores both afterwards.

    Eval mode keeps BatchNorm statistics fixed and makes each sample's gradient independent of the
    rest of the batch; turning ``requires_grad`` off spares autograd the weight-gradient work.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def project(x: torch.Tensor, delta: torch.Tensor, rho: float) -> torch.Tensor:
    """Project δ onto the ℓ∞ ball of radius ρ and so that x + δ stays in [0, 1]."""
    delta = delta.clamp(-rho, rho)
    return (x + delta).clamp(0.0, 1.0) - x


def logits_of(model: nn.Module, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """fp32 logits of ``model(x)``, the forward under bf16 autocast when ``amp``. Losses and input
    gradients stay fp32 (δ is an fp32 leaf), so every gradient sign is taken in fp32."""
    with autocast(x.device, amp):
        return model(x).float()


def input_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, amp: bool = False,
                   chunk: int | None = None, scale: float = 1.0) -> torch.Tensor:
    """∂(scale · Σ_i ℓ(f(x_i), y_i))/∂x_i for every row x_i of ``inputs`` (a constant here), as forward/
    backward passes over chunks of at most ``chunk`` rows (``None``: one pass).

    Chunking does not change the math: on a frozen model (eval mode, :func:`frozen`) row i's loss depends
    on row i alone, so its gradient is the same whichever rows share its pass (up to float rounding).
    It changes the speed: on a CPU chunks of about a hundred images are a few percent faster than one big pass
    (``device.resolve_pass_chunk``)."""
    n = inputs.shape[0]
    pieces = 1 if chunk is None else max(1, -(-n // chunk))  # equal chunks of at most ``chunk`` rows
    grads = []
    for xc, yc in zip(inputs.detach().tensor_split(pieces), labels.tensor_split(pieces)):
        xc = xc.detach().requires_grad_(True)
        loss = F.cross_entropy(logits_of(model, xc, amp), yc, reduction="sum") * scale
        grads.append(torch.autograd.grad(loss, xc)[0])
    return grads[0] if pieces == 1 else torch.cat(grads)


def pgd(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rho: float, alpha: float, steps: int,
        *, maximize: bool = True, stream=None, amp: bool = False, chunk: int | None = None) -> torch.Tensor:
    """ℓ∞ PGD; returns δ with ‖δ‖∞ ≤ ρ and x + δ ∈ [0, 1].

    ``maximize=True`` ascends the cross-entropy of ``labels`` (untargeted attack); ``maximize=False``
    descends it, which is a targeted attack when ``labels`` are the targets. A ``stream`` (see
    ``rng.py``) gives a uniform random start in the ball; ``None`` starts at zero. Call it on a
    model in eval mode with frozen parameters (see :func:`frozen`); x is treated as a constant.
    ``amp`` runs the passes under bf16 autocast (:func:`logits_of`); ``chunk`` splits them
    (:func:`input_gradient`).
    """
    x = x.detach()
    if steps <= 0 or rho <= 0:
        return torch.zeros_like(x)
    delta = torch.zeros_like(x) if stream is None else uniform_ball(stream, rho, *x.shape[1:])
    delta = project(x, delta.to(x.dtype), rho)
    sign = 1.0 if maximize else -1.0
    for _ in range(steps):
        grad = input_gradient(model, x + delta, labels, amp, chunk)
        delta = project(x, delta.detach() + sign * alpha * grad.sign(), rho)
    return delta.detach()
