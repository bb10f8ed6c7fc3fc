"""NTGA's math: the closed-form ReLU NTK against a wide network's empirical NTK, the predictor, and the
attack raising the held-out loss of a kernel model trained on the poisoned block."""
from __future__ import annotations

import math

import torch

from sem_dist.perturb.ntga import ReLUKernel, heldout_gradient, ntga_noise, predictor_coefficients, relu_ntk
from sem_dist.runtime.rng import make_generator


def empirical_ntk(x: torch.Tensor, depth: int, w_var: float, b_var: float, width: int, seed: int) -> torch.Tensor:
    """J Jᵀ of a finite fully-connected ReLU network in NTK parameterisation with one output."""
    g = make_generator(seed)
    dims = [x.shape[1]] + [width] * depth + [1]
    weights = [torch.randn(o, i, generator=g, dtype=x.dtype).requires_grad_() for i, o in zip(dims, dims[1:])]
    biases = [torch.randn(o, generator=g, dtype=x.dtype).requires_grad_() for o in dims[1:]]
    params = weights + biases

    def f(v):
        for layer, (w, b) in enumerate(zip(weights, biases)):
            v = math.sqrt(w_var / dims[layer]) * v @ w.T + math.sqrt(b_var) * b
            v = torch.relu(v) if layer < depth else v
        return v.sum()

    jac = torch.stack([torch.cat([p.flatten() for p in torch.autograd.grad(f(x[i:i + 1]), params)])
                       for i in range(len(x))])
    return jac @ jac.T


def test_closed_form_ntk_matches_a_wide_networks_empirical_ntk():
    x = torch.rand(5, 12, dtype=torch.float64, generator=make_generator(0))
    analytic = relu_ntk(x, x, 2, 1.76, 0.18)
    empirical = empirical_ntk(x, 2, 1.76, 0.18, width=2048, seed=0)
    assert ((empirical - analytic).norm() / analytic.norm()) < 0.1
    assert torch.allclose(analytic, analytic.T) and torch.linalg.eigvalsh(analytic).min() > 0


def test_predictor_interpolates_at_infinite_time_and_starts_at_zero():
    x = torch.rand(6, 10, dtype=torch.float64, generator=make_generator(1))
    y = torch.eye(3, dtype=torch.float64)[torch.arange(6) % 3]
    k = relu_ntk(x, x, 3, 1.76, 0.18)
    assert torch.allclose(k @ predictor_coefficients(k, y, None, 0.0), y, atol=1e-8)
    assert predictor_coefficients(k, y, 0.0, 0.0).abs().max() < 1e-10
    # finite t sits between: the fit improves with training time
    err = [(k @ predictor_coefficients(k, y, t, 0.0) - y).norm() for t in (10.0, 1e3)]
    assert err[0] > err[1]


def test_ntga_raises_the_heldout_loss_within_budget():
    g = make_generator(2)
    xb, xv = torch.rand(8, 1, 6, 6, generator=g), torch.rand(10, 1, 6, 6, generator=g)
    yb, yv = torch.arange(8) % 3, torch.arange(10) % 3
    kernel, rho = ReLUKernel(depth=2), 8 / 255
    xb[1] = xb[0]  # duplicate inputs must not make the gradient blow up
    yb[1] = yb[0]
    args = dict(num_classes=3, kernel=kernel, t=64.0, diag_reg=1e-4, val_chunk=4)
    clean, grad = heldout_gradient(xb, yb, xv, yv, **{k: v for k, v in args.items()})
    assert torch.isfinite(grad).all()
    # the chunked gradient equals the one-chunk gradient
    _, grad_one = heldout_gradient(xb, yb, xv, yv, **{**args, "val_chunk": 10})
    assert torch.allclose(grad, grad_one, atol=1e-10)
    delta = ntga_noise(xb, yb, xv, yv, rho=rho, alpha=rho / 4, steps=6, **args)
    assert delta.abs().max() <= rho + 1e-7 and (xb + delta).min() >= 0 and (xb + delta).max() <= 1
    poisoned, _ = heldout_gradient(xb + delta, yb, xv, yv, **args)
    assert poisoned > clean
