"""Image bytes ↔ uint8 CHW arrays, with one stated policy for modes and sizes.

Mode policy (every source that decodes files or bytes):
- 8-bit grayscale (``L``) and RGB are taken as they are; bilevel (``1``) becomes ``L``.
- Palette (``P``/``PA``) is expanded to its colours; CMYK, YCbCr, LAB and HSV are converted to RGB.
- An alpha channel is composited over black (what the pixels look like, not what is hidden under
  transparent areas).
- 16-bit and 32-bit images (``I;16*``, ``I``, ``F``) are refused: squeezing them to 8 bits would silently
  change the user's data; convert them to 8 bits first.
- The dataset has one channel count (1 for ``mode=L``, 3 for ``mode=RGB``): a grayscale image in an RGB
  dataset is replicated to three channels (lossless); colour in a grayscale dataset is converted to luma.
- Every image must have the dataset's size (the first image's, or the manifest's) unless a resize is asked
  for; otherwise it is a bad record.
Protected and converted datasets store PNG: lossless, so noise of ±8 grey levels survives exactly.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
CHANNEL_MODES = {1: "L", 3: "RGB"}


class BadImage(Exception):
    """The record's image cannot be used; the message says why (the caller names the record)."""


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in WIDE_MODES:
        raise BadImage(f"unsupported {img.mode} image (16/32-bit): convert it to 8-bit first")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert(CHANNEL_MODES[channels])


@dataclass
class ImageDecoder:
    """Decodes one dataset's images to uint8 (C, H, W). ``size`` (H, W) is fixed by the manifest or by the
    first image; ``resize`` (a side) resizes the shorter side then centre-crops, making sizes uniform."""

    channels: int = 3
    size: tuple[int, int] | None = None
    resize: int | None = None
    first_id: str | None = None

    def __post_init__(self):
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize is not None:
            self.size = (self.resize, self.resize)

    def decode(self, data: bytes, record_id: str) -> np.ndarray:
        arr = decode_image(data, self.channels, self.resize)
        if self.size is None:
            self.size, self.first_id = arr.shape[1:], record_id
        else:
            check_size(arr, self.size, self.first_id)
        return arr


def decode_image(data: bytes, channels: int, resize: int | None = None) -> np.ndarray:
    """Image bytes → uint8 (C, H, W) under the mode policy above, resized by :func:`resize_center_crop`
    when ``resize`` is set. The one decode every source uses, in the driver and in Ray tasks alike."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # decode now, so truncated data fails here and not later
    except Exception as exc:  # PIL raises many types for bad bytes; all mean "undecodable"
        raise BadImage(f"undecodable image ({type(exc).__name__}: {str(exc)[:120]})") from None
    img = to_mode(img, channels)
    if resize is not None:
        img = resize_center_crop(img, resize)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def check_size(arr: np.ndarray, size: tuple[int, int], first_id: str | None = None) -> None:
    if arr.shape[1:] != tuple(size):
        first = f" (first image {first_id!r})" if first_id else ""
        raise BadImage(f"image is {arr.shape[2]}×{arr.shape[1]}, the dataset's images are "
                       f"{size[1]}×{size[0]}{first}; mixed sizes need a resize (?size=N)")


def resize_center_crop(img: Image.Image, side: int) -> Image.Image:
    """Shorter side to ``side`` (bicubic; the longer side to ``max(side, round(long·side/short))``), then
    the central ``side``×``side`` crop (offsets rounded down)."""
    w, h = img.size
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - side) // 2, (nh - side) // 2
    return img.crop((left, top, left + side, top + side))


def encode_png(image_chw: np.ndarray) -> bytes:
    """uint8 (C, H, W) → PNG bytes (lossless)."""
    arr = image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
