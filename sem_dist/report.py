"""Figures a person can open: sample grids of clean / noise / protected images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .perturb.regenerate import apply_noise


def save_sample_grid(images: np.ndarray, noise: np.ndarray, path: str | Path) -> None:
    """Rows: clean, noise (amplified to the full grey range), protected. ``images`` uint8 NCHW."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    scale = max(1, int(np.abs(noise).max()))
    rows = [images, (noise.astype(np.float32) / (2 * scale) + 0.5), apply_noise(images, noise)]
    for r, (title, row) in enumerate(zip(("clean", f"noise ×{127 // scale}", "protected"), rows)):
        for c in range(n):
            img = np.transpose(row[c], (1, 2, 0))
            ax = axes[r, c]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0,
                      vmax=255 if row is not rows[1] else 1)
            ax.set_axis_off()
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
