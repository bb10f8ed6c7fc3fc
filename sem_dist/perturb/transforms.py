"""The transformation distribution T (EOT), batched, differentiable, driven by a random stream.

Each transform is a pure function ``t(x, u)`` of an NCHW batch in [0,1] and per-output-image uniforms
``u`` of shape ``(R·N, n_params)``: output row i transforms ``x[i // R]``, so the J draws of Algorithm 1
read one copy of each image instead of J materialised copies. Gradients flow back to ``x``. A
:class:`Transform` pairs the function with how many uniforms it needs, so solvers draw ``u`` from
whichever stream they hold (see ``rng.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LARGE_IMAGE_MIN_SIDE


def crop_flip(x: torch.Tensor, u: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Per-image random crop from the zero-padded image (offsets 0..2p) and horizontal flip.

    ``u[:, 0:2]`` pick the row/column offsets, ``u[:, 2] < 0.5`` flips. One gather, exact pixels.
    """
    _, _, h, w = x.shape
    n = u.shape[0]
    padded = F.pad(x, (padding, padding, padding, padding))  # R× fewer images to pad than to output
    span = 2 * padding + 1
    oy = (u[:, 0] * span).long().clamp_(max=span - 1)
    ox = (u[:, 1] * span).long().clamp_(max=span - 1)
    flip = u[:, 2] < 0.5
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = oy[:, None] + ar_h  # (N, H)
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (N, W)
    batch = torch.div(torch.arange(n, device=x.device), n // x.shape[0], rounding_mode="floor")[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)


def resized_crop_flip(x: torch.Tensor, u: torch.Tensor, scale: tuple[float, float] = (0.08, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop to the input size + horizontal flip, as one bilinear ``grid_sample``.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio) as in torchvision; a crop that would not
    fit is shrunk to fit (torchvision retries then falls back to a centre crop — a detail we trade for
    a fixed number of draws per image). ``u`` has 5 columns: area, ratio, centre y, centre x, flip.
    """
    x = repeat_rows(x, u.shape[0])
    n, _, h, w = x.shape
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image width
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cy = (2 * u[:, 2] - 1) * (1 - ch)  # crop centre in normalised [-1, 1] coordinates, crop kept inside
    cx = (2 * u[:, 3] - 1) * (1 - cw)
    sx = torch.where(u[:, 4] < 0.5, -cw, cw)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def identity(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return repeat_rows(x, u.shape[0])


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Each row of ``x`` n/len(x) times in a row (sample-major), the layout of ``u``'s rows."""
    return x if n == x.shape[0] else x.repeat_interleave(n // x.shape[0], dim=0)


@dataclass(frozen=True)
class Transform:
    """A member of T: ``fn(x, u)`` with ``n_params`` uniforms per image."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    n_params: int

    def __call__(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.fn(x, u)

    def sample(self, x: torch.Tensor, stream) -> torch.Tensor:
        """One draw of t per row of ``stream``, uniforms from it; ``stream`` has R rows per image of ``x``
        (R = 1: one transformed copy of each image)."""
        return self.fn(x, stream.rand(self.n_params))


TRANSFORMS = {
    "crop_flip": Transform("crop_flip", crop_flip, 3),
    "resized_crop_flip": Transform("resized_crop_flip", resized_crop_flip, 5),
    "none": Transform("none", identity, 0),
}


def get_transform(name: str, image_side: int) -> Transform:
    """Resolve ``auto`` to the paper's choice for the image size (crop+flip for 32×32, RRC for large)."""
    if name == "auto":
        name = "resized_crop_flip" if image_side >= LARGE_IMAGE_MIN_SIDE else "crop_flip"
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; choose auto, {', '.join(TRANSFORMS)}") from None
