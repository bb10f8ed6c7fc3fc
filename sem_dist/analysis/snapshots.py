"""(surrogate θ_t, defensive noise δ^u_t) snapshots of Algorithm 1 at chosen steps t (Figure 3's points).

Algorithm 1 only ever holds δ^u for its current minibatch, so a snapshot's noise is what the surrogate
θ_t would give every sample: Algorithm 4 (regeneration) with θ_t frozen — exactly how the final
protected dataset is made from the final θ, so F of a snapshot is the protection its θ_t would ship.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..models import build_model, unwrap
from ..perturb.generator import GeneratorTraining, iterate_steps, load_checkpoint, save_checkpoint
from ..perturb.in_memory import regenerate_all


@dataclass
class Snapshot:
    step: int  # t: Algorithm-1 steps taken before the snapshot
    model_state: dict  # θ_t (state dict, on CPU)
    noise: np.ndarray  # δ^u_t for every training sample, int8 grey levels (N, C, H, W)

    def surrogate(self, cfg: ProtectConfig, data: ArrayDataset, device: torch.device) -> torch.nn.Module:
        model = build_model(cfg.trainer.arch, data.num_classes, data.in_channels)
        model.load_state_dict(self.model_state)
        return model.to(device)


def evenly_spaced(total_steps: int, count: int) -> list[int]:
    """``count`` snapshot steps spread over (0, total_steps], the last one at the end of training."""
    if count < 1 or total_steps < 1:
        raise ValueError(f"need at least one snapshot of at least one step (got {count} of {total_steps} steps)")
    return sorted({max(1, round(total_steps * k / count)) for k in range(1, count + 1)})


def collect_snapshots(cfg: ProtectConfig, data: ArrayDataset, device: torch.device,
                      at_steps: Sequence[int], progress=None) -> Iterator[Snapshot]:
    """Run Algorithm 1 on ``data`` up to the last of ``at_steps`` and yield a snapshot at each of them
    (step 0 is the randomly initialised surrogate). ``progress`` gets Algorithm 1's per-step stats."""
    from ..perturb.methods import MinMinMax

    wanted = sorted(set(int(s) for s in at_steps))
    if not wanted or wanted[0] < 0 or wanted[-1] > cfg.trainer.steps:
        raise ValueError(f"snapshot steps {list(at_steps)} must lie in [0, {cfg.trainer.steps}] "
                         f"(Algorithm 1's M, trainer.steps)")
    if cfg.method not in MinMinMax.names:
        raise ValueError(f"method {cfg.method!r} has no Algorithm-1 surrogate to snapshot; "
                         f"choose one of {', '.join(MinMinMax.names)}")
    training = GeneratorTraining.create(cfg, data.num_classes, data.in_channels, data.image_side, device)
    regenerator = MinMinMax(cfg, data.num_classes, data.in_channels, data.image_side, device)

    def snapshot() -> Snapshot:
        regenerator.use_generator(training)
        state = {k: v.detach().cpu().clone() for k, v in unwrap(training.model).state_dict().items()}
        return Snapshot(training.step, state, regenerate_all(regenerator, data, device, cfg.regen_batch_size))

    if wanted[0] == 0:
        yield snapshot()
    for stats in iterate_steps(training, data, device):
        if progress is not None:
            progress(stats)
        if training.step in wanted:
            yield snapshot()
        if training.step >= wanted[-1]:
            return


def save_snapshot(snap: Snapshot, cfg: ProtectConfig, path: str | Path) -> None:
    """A plain tensor file (loadable with ``weights_only=True``), written atomically."""
    save_checkpoint({"step": snap.step, "model": snap.model_state, "noise": torch.from_numpy(snap.noise),
                     "config": cfg.to_dict()}, path)


def load_snapshot(path: str | Path) -> tuple[Snapshot, ProtectConfig]:
    state = load_checkpoint(path)
    return (Snapshot(int(state["step"]), state["model"], state["noise"].numpy()),
            ProtectConfig.from_dict(state["config"]))
