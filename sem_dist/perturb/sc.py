"""SC — linearly-separable synthetic shortcut noise (Yu et al. 2022, "Availability Attacks Create Shortcuts").

Three stages (the paper's baseline section): (1) class-wise initial points in a low-dimensional
space that are linearly separable; (2) each coordinate duplicated into a ``frame × frame`` patch,
which gives the noise local correlation; (3) rescaling to ℓ∞ = ρ_u. No model, no training.

Choices where the sources leave room or where we deviate from Yu et al.'s code, and why:
- One point per class, so the noise is identical within a class (class-wise, as the SEM paper and
  our issue describe it); Yu et al. draw one point per *sample* from its class's cluster.
- Initial points: the class centres are distinct random vertices of the hypercube {−s, +s}^d with
  s = ``class_sep`` (10 in Yu et al.) plus a unit Gaussian draw — the construction of scikit-learn's
  ``make_classification`` with one cluster per class, which Yu et al. use; distinct vertices keep the
  classes linearly separable.
- Rescaling to ℓ∞ = ρ_u per class (the SEM paper's "norm size 8/255"); Yu et al. rescale to the ℓ2
  norm of an ℓ∞-ball corner, which lets single pixels exceed ρ_u and would break the budget contract.
- d = C·⌈H/frame⌉·⌈W/frame⌉; patches are cropped at the right/bottom edge when frame ∤ H, W.
The pattern is a pure function of (seed, number of classes, image shape, frame, class_sep, ρ_u).
"""
from __future__ import annotations

import math

import torch

from ..runtime.rng import make_generator, step_seed
from ..training.pgd import project
from .base import NoiseMethod


def separable_points(num_classes: int, dim: int, class_sep: float, generator: torch.Generator) -> torch.Tensor:
    """``(num_classes, dim)`` points, one per class, around distinct hypercube vertices ±class_sep."""
    if dim < 63 and num_classes > 2 ** dim:
        raise ValueError(f"{num_classes} classes need more distinct hypercube vertices than a {dim}-dimensional "
                         "point space has: use a smaller frame size")
    rows: list[torch.Tensor] = []
    seen: set[tuple[int, ...]] = set()
    while len(rows) < num_classes:  # redraw a class's vertex until it is not another class's
        v = torch.randint(0, 2, (dim,), generator=generator)
        key = tuple(v.tolist())
        if key not in seen:
            seen.add(key)
            rows.append(v)
    vertices = torch.stack(rows).float() * 2 - 1
    return class_sep * vertices + torch.randn(num_classes, dim, generator=generator)


def shortcut_patterns(num_classes: int, shape: tuple[int, int, int], frame: int, rho: float, class_sep: float,
                      seed: int) -> torch.Tensor:
    """Class-wise noise ``(num_classes, C, H, W)`` with ℓ∞ norm exactly ρ per class."""
    c, h, w = shape
    if frame < 1:
        raise ValueError(f"sc frame size must be >= 1, got {frame}")
    gh, gw = math.ceil(h / frame), math.ceil(w / frame)
    points = separable_points(num_classes, c * gh * gw, class_sep, make_generator(step_seed(seed, 0, purpose="sc")))
    grid = points.reshape(num_classes, c, gh, gw)
    patches = grid.repeat_interleave(frame, dim=2).repeat_interleave(frame, dim=3)[:, :, :h, :w]
    return rho * patches / patches.flatten(1).abs().amax(1).view(-1, 1, 1, 1)


class SyntheticShortcut(NoiseMethod):
    """Class-wise synthetic shortcut noise; ``fit`` needs no data."""

    names = ("sc",)
    extra_keys = ("frame_size", "class_sep")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._patterns: dict[tuple[int, ...], torch.Tensor] = {}

    def fit(self, data, *, checkpoint_dir=None, resume=False, progress=None) -> None:
        """Nothing to learn: the patterns are a pure function of the seed and the image shape."""

    def patterns(self, shape: tuple[int, int, int]) -> torch.Tensor:
        if shape not in self._patterns:
            self._patterns[shape] = shortcut_patterns(
                self.num_classes, shape, int(self.extra("frame_size")), self.cfg.budget.rho_u,
                float(self.extra("class_sep")), self.cfg.seed).to(self.device)
        return self._patterns[shape]

    def perturb(self, x, y, ids):
        if int(y.max()) >= self.num_classes or int(y.min()) < 0:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {int(y.min())}..{int(y.max())}")
        return project(x, self.patterns(tuple(x.shape[1:]))[y].to(x.dtype), self.cfg.budget.rho_u)
