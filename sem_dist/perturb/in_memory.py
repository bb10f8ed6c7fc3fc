"""Protection as one in-process pipeline: fit the method, then regenerate noise for every sample.

This is the seam where Ray Train (fit) and Ray Data (regeneration) plug in: both run the same
method objects, only spread over workers.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..runtime.progress import bar
from .algorithm4 import apply_noise, regenerate
from .methods import NoiseMethod, get_method


def fit_method(cfg: ProtectConfig, data: ArrayDataset, device: torch.device,
               checkpoint_dir: str | Path | None = None, resume: bool = False) -> NoiseMethod:
    method = get_method(cfg, data.num_classes, data.in_channels, data.image_side, device)
    with bar(cfg.trainer.steps, f"{cfg.method}: generator (Alg. 1)", unit="step") as pb:
        def progress(stats: dict) -> None:
            pb.n = stats["step"]
            pb.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.2f}", refresh=False)
            pb.refresh()
        method.fit(data, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
    return method


def regenerate_all(method: NoiseMethod, data: ArrayDataset, device: torch.device, batch_size: int) -> np.ndarray:
    """Algorithm 4 over every sample; int8 noise (N, C, H, W) in dataset order."""
    out = np.empty(data.images.shape, dtype=np.int8)
    pos = 0
    with bar(len(data), f"{method.cfg.method}: noise (Alg. 4)", unit="img") as pb:
        for ids, noise in regenerate(method, data.iter_batches(batch_size), device):
            out[pos:pos + len(ids)] = noise
            pos += len(ids)
            pb.update(len(ids))
    return out


def protect_arrays(cfg: ProtectConfig, data: ArrayDataset, device: torch.device,
                   checkpoint_dir: str | Path | None = None, resume: bool = False) -> tuple[ArrayDataset, dict]:
    """The protected dataset (images + noise) and timings."""
    t0 = time.perf_counter()
    method = fit_method(cfg, data, device, checkpoint_dir, resume)
    t1 = time.perf_counter()
    noise = regenerate_all(method, data, device, method.regen_batch_size())
    t2 = time.perf_counter()
    return data.with_images(apply_noise(data.images, noise), noise), {"fit_s": t1 - t0, "regenerate_s": t2 - t1}
