"""The paper's correlation analysis (Figure 3, Table 10): for Algorithm-1 snapshots t, compute R_θ(θ_t),
R_δu(δ^u_t) and the protection performance F_t = 1 − Acc of a victim trained on x + δ^u_t, then
correlate F with each term."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import ProtectConfig
from ..data.arrays import ArrayDataset
from ..perturb.algorithm4 import apply_noise
from ..victims.train import VictimConfig, train_victim
from .correlation import correlations
from .robustness import noise_robustness, surrogate_robustness, term_steps
from .snapshots import collect_snapshots, save_snapshot

TERMS = ("R_theta", "R_delta_u")


def robustness_analysis(cfg: ProtectConfig, train: ArrayDataset, test: ArrayDataset, device: torch.device,
                        at_steps: Sequence[int], victim: VictimConfig, *, theta_steps: int | None = None,
                        delta_steps: int | None = None, snapshot_dir: str | Path | None = None,
                        progress: Callable[[str], None] | None = None) -> dict:
    """One row per snapshot (step, R_θ, R_δu, test accuracy, F) and the correlations of F with each term.

    ``train`` is the clean training set; ``victim`` is how F's victim is trained; ``theta_steps`` and
    ``delta_steps`` are the M of each term (see ``robustness.py``). With ``snapshot_dir`` every snapshot
    is also saved as ``step-<t>.pt``. ``progress(stage)`` names each of the three
    stages per snapshot (R_θ, R_δu, victim) as it starts.
    """
    if len(set(at_steps)) < 3:
        raise ValueError(f"the correlation analysis needs at least 3 snapshots, got {sorted(set(at_steps))}")
    m_theta, m_delta = term_steps(cfg, len(train), theta_steps, delta_steps)
    report = progress or (lambda stage: None)
    t0 = time.perf_counter()
    rows = []
    for snap in collect_snapshots(cfg, train, device, at_steps):
        if snapshot_dir is not None:
            save_snapshot(snap, cfg, Path(snapshot_dir) / f"step-{snap.step:06d}.pt")
        report(f"step {snap.step}: R_θ")
        r_theta = surrogate_robustness(snap.surrogate(cfg, train, device), train, cfg, device, m_theta, seed=cfg.seed)
        report(f"step {snap.step}: R_δu")
        protected = train.with_images(apply_noise(train.images, snap.noise), snap.noise)
        r_delta = noise_robustness(protected, cfg, device, m_delta, seed=cfg.seed)
        report(f"step {snap.step}: victim")
        acc = train_victim(victim, protected, test, device).test_acc
        rows.append({"step": snap.step, "R_theta": r_theta, "R_delta_u": r_delta, "test_acc": acc, "F": 1.0 - acc})
    f = [r["F"] for r in rows]
    return {"method": cfg.method, "config": cfg.to_dict(),
            "victim": dataclasses.asdict(victim), "theta_steps": m_theta, "delta_steps": m_delta, "snapshots": rows,
            "correlations": {term: correlations([r[term] for r in rows], f) for term in TERMS},
            "wall_s": time.perf_counter() - t0}
