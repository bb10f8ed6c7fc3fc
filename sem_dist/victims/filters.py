"""Low-pass filters a victim may apply to its training images (Table 4; Fu et al. 2022): mean,
median and Gaussian, each over a 3×3 window.

Pure functions of an NCHW float batch in [0,1], applied per channel. Borders are mirrored without
repeating the edge pixel (``reflect``, OpenCV's default BORDER_REFLECT_101), so a constant image stays
constant. The Gaussian is the 3×3 binomial kernel [1,2,1]ᵀ[1,2,1]/16 — what OpenCV's
``GaussianBlur(ksize=3, sigma=0)`` uses, and the paper gives no σ of its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FILTERS = ("none", "mean", "median", "gaussian")


def _windows(x: torch.Tensor) -> torch.Tensor:
    """The 3×3 neighbourhood of every pixel: (N, C, H, W, 9)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(*x.shape, 9)


_BINOMIAL = torch.tensor([1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]) / 16.0


def low_pass(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``kind``-filtered copy of ``x`` (NCHW, any float dtype); ``none`` returns ``x`` itself."""
    if kind == "none":
        return x
    if kind == "mean":
        return _windows(x).mean(-1)
    if kind == "median":
        return _windows(x).median(-1).values  # 9 values: the middle one, no averaging of two
    if kind == "gaussian":
        return _windows(x) @ _BINOMIAL.to(device=x.device, dtype=x.dtype)
    raise ValueError(f"unknown filter {kind!r}; choose one of {', '.join(FILTERS)}")
