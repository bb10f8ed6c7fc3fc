"""The δ^u solver shared by Algorithm 1 (lines 2–9), Algorithm 3 and Algorithm 4.

K_u signed-gradient *descent* steps on the defensive noise δ^u from a uniform start in ±ρ_u. Each step
averages ∂ℓ(f(t_j(x+δ^u) + δ_j), y)/∂δ^u over J draws of (t_j, δ_j), computed as ONE forward/backward
over J·B images. The inner perturbation δ_j is

- ``random``      SEM: δ^r ~ U(−ρ_r, ρ_r) per element (Eq. 10);
- ``adversarial`` REM: K_a-step PGD ascent on t_j(x+δ^u) (Eq. 6);
- ``none``        min-min (EM and Table 7's last row).

The model must be in eval mode with frozen parameters (``pgd.frozen``); every sample's gradient then
depends on that sample alone, so with per-sample streams the noise is independent of batching.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..config import ProtectConfig
from ..runtime.device import CapturedCall, resolve_amp, resolve_pass_chunk
from ..runtime.rng import CounterStream, uniform_ball
from ..training.pgd import frozen, input_gradient, project
from ..training.transforms import Transform, get_transform, repeat_rows
from .attacks import get_attack


class RepeatStream:
    """View a per-sample stream as one over J copies of each sample (rows ordered sample-major)."""

    def __init__(self, stream, repeats: int):
        self.stream, self.repeats = stream, repeats
        self.n = stream.n * repeats
        self.device = stream.device

    def rand(self, *shape: int) -> torch.Tensor:
        return self.stream.rand(self.repeats, *shape).reshape(self.n, *shape)


@dataclass(frozen=True)
class NoiseSpec:
    """Numeric settings of the δ^u solver, resolved from a :class:`ProtectConfig`."""

    rho_u: float
    alpha_u: float
    steps: int  # K_u
    samples: int  # J
    inner: str  # random | adversarial | none
    rho_r: float
    rho_a: float
    alpha_a: float
    attack_steps: int  # K_a
    attack: Callable  # inner maximiser for ``adversarial`` (Table 14)
    transform: Transform
    amp: str | bool = "auto"  # trainer.amp, resolved per device (amp_on)
    pass_chunk: str | int = "auto"  # trainer.pass_chunk, resolved per device and image size (chunk_rows)

    def amp_on(self, x: torch.Tensor) -> bool:
        """Whether the passes over tensors like ``x`` run under bf16 autocast."""
        return resolve_amp(self.amp, x.device)

    def chunk_rows(self, x: torch.Tensor) -> int | None:
        """Rows per chunk of an input-gradient pass over images like ``x`` (``None``: one pass)."""
        return resolve_pass_chunk(self.pass_chunk, x.device, tuple(x.shape))

    @classmethod
    def from_config(cls, cfg: ProtectConfig, image_side: int) -> "NoiseSpec":
        return cls(rho_u=cfg.budget.rho_u, alpha_u=cfg.alpha_u, steps=cfg.solver.steps,
                   samples=cfg.solver.samples, inner=cfg.solver.inner, rho_r=cfg.budget.rho_random,
                   rho_a=cfg.budget.rho_a, alpha_a=cfg.alpha_a, attack_steps=cfg.attack.steps,
                   attack=get_attack(cfg.attack.algorithm), transform=get_transform(cfg.solver.transform,
                   image_side), amp=cfg.trainer.amp, pass_chunk=cfg.trainer.pass_chunk)


def inner_perturbation(model: nn.Module, xt: torch.Tensor, y_rep: torch.Tensor, spec: NoiseSpec,
                       stream) -> torch.Tensor | None:
    """δ_j for the transformed images ``xt`` (J·B rows, detached); ``None`` for no perturbation."""
    if spec.inner == "random":
        return uniform_ball(stream, spec.rho_r, *xt.shape[1:]).to(xt.dtype)
    if spec.inner == "adversarial":
        return spec.attack(model, xt, y_rep, spec.rho_a, spec.alpha_a, spec.attack_steps, stream=stream,
                           amp=spec.amp_on(xt))
    if spec.inner == "none":
        return None
    raise ValueError(f"unknown inner perturbation {spec.inner!r}")


def noise_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, spec: NoiseSpec,
                   rows: RepeatStream) -> torch.Tensor:
    """g = (1/J) Σ_j ∂ℓ(f(t_j(x+δ^u) + δ_j), y)/∂δ^u as one batched pass over J·B images (J rows per sample),
    run as chunks of rows where that is faster (``spec.chunk_rows``); the model's input gradient is then
    taken back through the clamp and t_j to δ^u in one more (cheap) backward."""
    j = spec.samples
    y_rep = repeat_rows(y, len(y) * j)
    delta = delta.detach().requires_grad_(True)
    xt = spec.transform.sample(x + delta, rows)  # J rows per sample, without J copies of x + δ^u first
    delta_j = inner_perturbation(model, xt.detach(), y_rep, spec, rows)
    # δ_j is a constant; the gradient reaches δ^u through the clamp and t_j
    inputs = xt if delta_j is None else (xt + delta_j).clamp_(0.0, 1.0)
    g_inputs = input_gradient(model, inputs, y_rep, spec.amp_on(inputs), spec.chunk_rows(inputs), scale=1.0 / j)
    (grad,) = torch.autograd.grad(inputs, delta, grad_outputs=g_inputs)
    return grad


def solve_noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: NoiseSpec, stream) -> torch.Tensor:
    """Defensive noise δ^u for the batch ``(x, y)``; ``stream`` has one row per sample.

    Returns δ^u with ‖δ^u‖∞ ≤ ρ_u and x + δ^u ∈ [0, 1]. ``model`` must be frozen (eval mode).
    """
    x = x.detach()
    delta = project(x, uniform_ball(stream, spec.rho_u, *x.shape[1:]).to(x.dtype), spec.rho_u)
    rows = RepeatStream(stream, spec.samples)
    for _ in range(spec.steps):
        grad = noise_gradient(model, x, y, delta, spec, rows)
        delta = project(x, delta - spec.alpha_u * grad.sign(), spec.rho_u)
    return delta


class KeyedSolver:
    """Algorithm 4's solve: δ^u for batches whose rows are keyed per sample (``CounterStream`` keys, e.g. from
    ``(seed, sample id)``) on ``model`` frozen, as one :class:`~sem_dist.runtime.device.CapturedCall`: with
    ``graphs`` (``trainer.graphs``) on a GPU, each batch of the usual shape replays one CUDA graph of the
    K_u·(J·B-image pass + sign step + projection) solve; a batch of another shape (the last) runs eagerly.
    The model's weights are read in place, so loading new ones (``load_state_dict``) needs no new graph."""

    def __init__(self, model: nn.Module, spec: NoiseSpec, graphs: str = "auto"):
        self.model, self.spec = model, spec
        self._solve = CapturedCall(self._run, graphs)

    def _run(self, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        with frozen(self.model):
            return solve_noise(self.model, x, y, self.spec, CounterStream(keys))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self._solve(x, y, keys)
