"""Defenses a victim may use against unlearnable examples beyond the paper's (``--defense NAME[:ARG]``).

Two kinds, applied at different places of victim training (``train.py``):

- **pre-processing**, once on the uint8 training images before training (what a data owner's pipeline
  would do to the files): ``jpeg:Q``, ``grayscale``, ``bdr:BITS``, ``iss``, ``noise-blur:SIGMA``;
- **training-time augmentation**, fresh random draws on every minibatch after the standard crop/flip and
  before adversarial training's PGD: ``ueraser[:K]``.

Every image function is pure: uint8 NCHW in, uint8 NCHW out (pre-processing) or a float [0,1] batch and
a random stream in, a float batch out (augmentation). Sources and our deviations: docs/evaluation.md.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import parse_fraction
from ..runtime.rng import step_seed
from ..training.pgd import frozen
from .filters import low_pass

# ---- pre-processing (once, on uint8 images) -------------------------------------------------------------


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Re-compress every image with Pillow's JPEG codec at ``quality`` (1–100, Pillow's default 4:2:0
    chroma subsampling for colour) and decode it again."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1)
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (Pillow's ``convert("L")``: (19595·R + 38470·G + 7471·B + 2^15) >> 16) copied to
    every channel, so the model's input shape is unchanged; one-channel images are returned as they are."""
    if images.shape[1] == 1:
        return images
    r, g, b = (images[:, c].astype(np.uint32) for c in range(3))
    luma = ((19595 * r + 38470 * g + 7471 * b + (1 << 15)) >> 16).astype(np.uint8)
    return np.repeat(luma[:, None], images.shape[1], axis=1)


def bit_depth(images: np.ndarray, bits: int) -> np.ndarray:
    """Bit-depth reduction: round each value to the nearest of 2^bits evenly spaced levels of 0..255."""
    steps = (1 << bits) - 1
    return np.rint(np.rint(images.astype(np.float64) * steps / 255.0) * 255.0 / steps).astype(np.uint8)


def noise_blur(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Gaussian noise N(0, σ²) per pixel (σ in [0,1] units), truncated to ±3σ, added and clipped to [0,1];
    then the 3×3 binomial Gaussian blur of ``--filter gaussian``; rounded back to uint8. The noise is drawn
    from ``seed`` alone. Since the blur is an average, every output pixel lies within 3σ + 0.5/255 of the
    blurred original."""
    rng = np.random.default_rng(step_seed(seed, 0, purpose="noise-blur"))
    noise = np.clip(rng.standard_normal(images.shape) * sigma, -3 * sigma, 3 * sigma)
    noisy = np.clip(images / 255.0 + noise, 0.0, 1.0)
    blurred = low_pass(torch.from_numpy(noisy), "gaussian").numpy()
    return np.rint(blurred * 255.0).astype(np.uint8)


ISS_JPEG_QUALITY = 10  # Liu et al. 2023's JPEG setting


def iss(images: np.ndarray) -> np.ndarray:
    """Image-shortcut-squeezing style: grayscale, then JPEG at quality 10."""
    return jpeg(grayscale(images), ISS_JPEG_QUALITY)


# ---- training-time augmentation (every minibatch, float [0,1]) ------------------------------------------


def plasma(stream, channels: int, h: int, w: int, roughness: torch.Tensor) -> torch.Tensor:
    """A fractal "plasma" map per image and channel, min–max normalised to [0,1]: octave o adds uniform
    noise on a (2^o+1)² grid, bilinearly upsampled, with amplitude roughness^o (rougher = more fine detail)."""
    octaves = max(1, math.ceil(math.log2(max(h, w))))
    field = 0.0
    for o in range(octaves + 1):
        side = (1 << o) + 1
        grid = 2.0 * stream.rand(channels, side, side) - 1.0
        up = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
        field = field + roughness.view(-1, 1, 1, 1) ** o * up
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-12)


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return x.mean(1, keepdim=True)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _affine_op(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def op(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        if kind == "rotate":  # ±30°
            a = torch.deg2rad((2 * m - 1) * 30.0)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
        elif kind == "shear_x":  # ±0.3
            theta[:, 0, 1] = (2 * m - 1) * 0.3
        elif kind == "shear_y":
            theta[:, 1, 0] = (2 * m - 1) * 0.3
        elif kind == "translate_x":  # ±half the width (normalised coordinates span 2)
            theta[:, 0, 2] = (2 * m - 1) * 1.0
        else:
            theta[:, 1, 2] = (2 * m - 1) * 1.0
        return _affine(x, theta)
    return op


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ImageEnhance: degenerate + factor·(x − degenerate), clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0  # Pillow's SMOOTH kernel


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    k = _SMOOTH.to(x).expand(c, 1, 3, 3)
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
    return _blend(x, smooth, 0.1 + 1.8 * m)


def _autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    drop = torch.floor(m * 5).clamp(max=4).view(-1, 1, 1, 1)  # 0–4 low bits removed
    q = torch.pow(2.0, drop)
    return torch.floor(torch.round(x * 255) / q) * q / 255


# TrivialAugment's one-op-per-image menu with kornia's default magnitude ranges (m ~ U[0,1) per image).
TRIVIAL_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": lambda x, m: x,
    "auto_contrast": _autocontrast,
    "rotate": _affine_op("rotate"),
    "posterize": _posterize,
    "solarize": lambda x, m: torch.where(x >= m.view(-1, 1, 1, 1), 1 - x, x),
    "contrast": lambda x, m: _blend(x, _luma(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), 0.1 + 1.8 * m),
    "brightness": lambda x, m: _blend(x, torch.zeros_like(x), 0.1 + 1.8 * m),
    "sharpness": _sharpness,
    "shear_x": _affine_op("shear_x"),
    "shear_y": _affine_op("shear_y"),
    "translate_x": _affine_op("translate_x"),
    "translate_y": _affine_op("translate_y"),
}


def trivial_augment(x: torch.Tensor, stream) -> torch.Tensor:
    """One op per image, chosen uniformly from :data:`TRIVIAL_OPS`, with a uniform magnitude."""
    u = stream.rand(2)
    pick = (u[:, 0] * len(TRIVIAL_OPS)).long().clamp_(max=len(TRIVIAL_OPS) - 1)
    out = x.clone()
    for k, op in enumerate(TRIVIAL_OPS.values()):
        idx = torch.nonzero(pick == k).flatten()
        if len(idx):
            out[idx] = op(x[idx], u[idx, 1])
    return out


def ueraser(x: torch.Tensor, stream) -> torch.Tensor:
    """One UEraser-style draw: plasma brightness, plasma contrast (both always), channel shuffle (p = 0.5),
    then TrivialAugment."""
    n, c, h, w = x.shape
    u = stream.rand(4)
    bright = plasma(stream, c, h, w, 0.1 + 0.6 * u[:, 0])
    x = (x + u[:, 1].view(-1, 1, 1, 1) * (2 * bright - 1)).clamp(0, 1)
    contrast = plasma(stream, c, h, w, 0.1 + 0.6 * u[:, 2])
    x = ((x - 0.5) * 4 * contrast + 0.5).clamp(0, 1)
    if c > 1:
        perm = torch.argsort(stream.rand(c), dim=1)  # a uniformly random channel order per image
        shuffled = torch.gather(x, 1, perm.view(n, c, 1, 1).expand_as(x))
        x = torch.where((u[:, 3] < 0.5).view(-1, 1, 1, 1), shuffled, x)
    return trivial_augment(x, stream)


def ueraser_max(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, stream, repeats: int) -> torch.Tensor:
    """UEraser's adversarial augmentation: ``repeats`` draws per image, keep the one with the highest loss
    under the current model (eval mode, no gradients). ``repeats = 1`` is a single draw (UEraser-Lite)."""
    if repeats == 1:
        return ueraser(x, stream)
    draws = [ueraser(x, stream) for _ in range(repeats)]
    with torch.no_grad(), frozen(model):
        losses = torch.stack([F.cross_entropy(model(d).float(), y, reduction="none") for d in draws])
    best = losses.argmax(0)
    return torch.stack(draws)[best, torch.arange(len(x), device=x.device)]


# ---- names on the command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DefenseSpec:
    """One ``NAME[:ARG]``: its kind (``pre`` or ``batch``) and parsed argument."""

    name: str
    arg: float | int | None
    kind: str

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg:.6g}"


def _int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"{what} must be an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise ValueError(f"{what} must be in [{lo}, {hi}], got {v}")
        return v
    return parse


def _sigma(text: str) -> float:
    v = parse_fraction(text)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"noise-blur σ must be in (0, 1] ([0,1] pixel units, e.g. 8/255), got {text!r}")
    return v


@dataclass(frozen=True)
class Defense:
    """A defense's kind (``pre``: once on the training images; ``batch``: every minibatch), its argument
    parser (None: takes no argument), default argument and, for ``pre``, ``apply(images, arg, seed)``."""

    kind: str
    parse: Callable[[str], float | int] | None
    default: float | int | None
    apply: Callable[[np.ndarray, float | int | None, int], np.ndarray] | None = None


DEFENSES: dict[str, Defense] = {
    "jpeg": Defense("pre", _int_in(1, 100, "jpeg quality"), ISS_JPEG_QUALITY, lambda x, q, seed: jpeg(x, int(q))),
    "grayscale": Defense("pre", None, None, lambda x, _, seed: grayscale(x)),
    "bdr": Defense("pre", _int_in(1, 8, "bdr bits"), 2, lambda x, bits, seed: bit_depth(x, int(bits))),
    "iss": Defense("pre", None, None, lambda x, _, seed: iss(x)),
    "noise-blur": Defense("pre", _sigma, 8 / 255, lambda x, sigma, seed: noise_blur(x, float(sigma), seed)),
    "ueraser": Defense("batch", _int_in(1, 64, "ueraser repeats K"), 1),
}


def parse_defense(text: str) -> DefenseSpec:
    name, _, arg = text.strip().partition(":")
    name = name.strip().lower()
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r} in {text!r}; choose from {', '.join(DEFENSES)} "
                         "(NAME or NAME:ARG, e.g. jpeg:10)")
    d = DEFENSES[name]
    if d.parse is None:
        if arg.strip():
            raise ValueError(f"defense {name!r} takes no argument, got {text!r}")
        return DefenseSpec(name, None, d.kind)
    try:
        value = d.parse(arg.strip()) if arg.strip() else d.default
    except ValueError as exc:
        raise ValueError(f"defense {text.strip()!r}: {exc}") from None
    return DefenseSpec(name, value, d.kind)


def parse_defenses(specs: Sequence[str]) -> list[DefenseSpec]:
    """Every ``NAME[:ARG]`` in ``specs``, each entry possibly comma-separated; order is kept. At most one
    training-time augmentation."""
    out = [parse_defense(t) for s in specs for t in s.split(",") if t.strip()]
    if sum(d.kind == "batch" for d in out) > 1:
        raise ValueError("give at most one training-time augmentation defense (ueraser)")
    return out


def preprocess(images: np.ndarray, defenses: Sequence[DefenseSpec], seed: int) -> np.ndarray:
    """The pre-processing defenses in the order given, on uint8 NCHW images."""
    for d in defenses:
        if d.kind == "pre":
            images = DEFENSES[d.name].apply(images, d.arg, seed)
    return images


def augmentation(defenses: Sequence[DefenseSpec]) -> DefenseSpec | None:
    return next((d for d in defenses if d.kind == "batch"), None)
