"""Does SEM's noise survive adversarial training at CPU scale, and if not, is that scale or a defect?
(issue #12 §5; the write-up with the measured numbers is docs/evidence.md)

On the bundled digits (1,437 train / 360 test, 32×32 grey, small CNN) this measures:

- ``fig5``: Figure 5 at CPU scale — one SEM generator run (Algorithm 1), snapshotted at several M; for each
  snapshot the noise Algorithm 4 would ship, the victim's clean test accuracy under standard training and
  adversarial training at ρ_a ∈ {2, 4}/255, the surrogate's own signature (its training loss, its accuracy
  on x+δ^u vs x, how class-consistent the noise is) and the robustness terms R_θ and R_δu (Eq. 8/9);
- ``methods``: EM, REM and SEM at the same budget (same M, K_u, J, K_a, batch), same victims;
- ``generator_radii``: SEM with the generator's ρ_a and ρ_r varied (Table 6 at CPU scale);
- ``clean``: the unprotected baseline for every victim.

One documented scale: small CNN; batch 64; K_u = 5 and J = 2 (paper 10 and 5); K_a = 3 steps of ρ_a/5
from a random start (paper 10); constant generator learning rate 0.1 (M is far
below the paper's first decay at step 2000); victims 120 steps (≈ 5.3 epochs) with 3-step PGD of ρ_a/2
when adversarially trained. ``--quick`` shrinks M, the grid and the victims for a smoke run.
The last stdout line is one JSON object; with verbose output every finished cell is also printed as
``cell {...}`` so a long run's partial numbers are never lost.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.robustness import noise_robustness, surrogate_robustness
from ..analysis.snapshots import collect_snapshots
from ..config import ProtectConfig, resolve_config
from ..data.arrays import ArrayDataset
from ..data.sources.digits import load_digits
from ..perturb.algorithm4 import apply_noise
from ..perturb.in_memory import protect_arrays
from ..victims.train import VictimConfig, train_victim

CPU = torch.device("cpu")
SCALE = {"trainer.arch": "small_cnn", "trainer.batch_size": 64, "trainer.lr_step": 10 ** 9,
         "solver.steps": 5, "solver.samples": 2, "attack.steps": 3}
VICTIM = VictimConfig(arch="small_cnn", steps=120, batch_size=64, adv_steps=3, adv_alpha_div=2.0)


def levels(rho: float) -> int:
    return int(round(rho * 255))


def generator_config(method: str, steps: int, rho_u: float, rho_a: float = 4 / 255, rho_r: float | None = None,
                     seed: int = 0, extra: dict | None = None) -> ProtectConfig:
    """The CPU-scale configuration of ``method``; ``extra`` holds further dotted overrides. SCALE's solver
    and attack loop counts apply to the min-min-max family only: the baselines keep their own (TAP's 250
    PGD steps of ρ_u/125 could not reach ρ_u in 5) and have no adversary whose ρ_a could be set."""
    from ..perturb.methods import MinMinMax

    scale = SCALE if method in MinMinMax.names else {k: v for k, v in SCALE.items()
                                                     if not k.startswith(("solver.", "attack."))}
    overrides = dict(scale, **{"trainer.steps": steps, "budget.rho_u": rho_u}, **(extra or {}))
    if method in MinMinMax.names and method != "em":  # EM's YAML has ρ_a = 0 and no inner perturbation
        overrides.update({"budget.rho_a": rho_a, "budget.rho_r": rho_r})
    cfg = resolve_config(method, 32, overrides=overrides)
    return dataclasses.replace(cfg, seed=seed)


def victim_accuracies(protected: ArrayDataset, test: ArrayDataset, radii: Sequence[float],
                      victim: VictimConfig) -> dict[str, dict]:
    """Victim test (and final train) accuracy per adversarial-training radius, keyed by grey levels."""
    out = {}
    for rho in radii:
        r = train_victim(dataclasses.replace(victim, adv_rho=rho), protected, test, CPU)
        out[str(levels(rho))] = {"test_acc": r.test_acc, "train_acc": r.train_acc, "wall_s": r.wall_s}
    return out


def class_consistency(noise: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cosine similarity of noise between samples of the same class and of different classes:
    error-minimizing noise that acts as a class-wise shortcut has the first well above the second."""
    f = noise.reshape(len(noise), -1).astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
    sim = f @ f.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return {"same_class": float(sim[same].mean()), "other_class": float(sim[labels[:, None] != labels[None, :]].mean())}


@torch.no_grad()
def surrogate_signature(model: torch.nn.Module, clean: ArrayDataset, protected: ArrayDataset) -> dict[str, float]:
    """The frozen surrogate on x and on x+δ^u: error-minimizing noise drives the second loss towards 0."""
    model.eval()
    x, y = clean.batch(np.arange(len(clean)))
    xp, _ = protected.batch(np.arange(len(protected)))
    out = {}
    for name, inputs in (("clean", x), ("protected", xp)):
        logits = model(inputs)
        out[f"acc_{name}"] = float((logits.argmax(1) == y).float().mean())
        out[f"loss_{name}"] = float(F.cross_entropy(logits, y))
    return out


def noise_summary(noise: np.ndarray, labels: np.ndarray, rho_u: float) -> dict:
    q = levels(rho_u)
    a = np.abs(noise.astype(np.int16))
    return {"mean_abs_levels": float(a.mean()), "fraction_at_rho_u": float((a == q).mean()),
            "consistency": class_consistency(noise, labels)}


def fig5(rho_u: float, at_steps: Sequence[int], radii: Sequence[float], victim: VictimConfig,
         train: ArrayDataset, test: ArrayDataset, *, rho_a: float = 4 / 255, robustness: dict | None = None,
         log: Callable[[dict], None] = lambda cell: None) -> list[dict]:
    """One SEM generator run, a row per snapshot M: victims, surrogate signature, noise, R_θ / R_δu."""
    cfg = generator_config("sem", max(at_steps), rho_u, rho_a)
    losses: list[tuple[float, float]] = []
    rows = []
    t0 = time.perf_counter()
    for snap in collect_snapshots(cfg, train, CPU, at_steps,
                                  progress=lambda s: losses.append((s["loss"], s["acc"]))):
        protected = train.with_images(apply_noise(train.images, snap.noise), snap.noise)
        surrogate = snap.surrogate(cfg, train, CPU)
        recent = losses[-10:] or [(float("nan"), float("nan"))]
        row = {"experiment": "fig5", "method": "sem", "rho_u": levels(rho_u), "gen_rho_a": levels(rho_a),
               "M": snap.step, "gen_train_loss": float(np.mean([l for l, _ in recent])),
               "gen_train_acc": float(np.mean([a for _, a in recent])),
               "surrogate": surrogate_signature(surrogate, train, protected),
               "noise": noise_summary(snap.noise, train.labels, rho_u),
               "victims": victim_accuracies(protected, test, radii, victim)}
        if robustness is not None:
            row["R_theta"] = surrogate_robustness(surrogate, train, cfg, CPU, steps=robustness["theta_steps"])
            row["R_delta_u"] = noise_robustness(protected, cfg, CPU, steps=robustness["delta_steps"])
        row["elapsed_s"] = time.perf_counter() - t0
        log(row)
        rows.append(row)
    return rows


def protect_and_score(method: str, steps: int, rho_u: float, radii: Sequence[float], victim: VictimConfig,
                      train: ArrayDataset, test: ArrayDataset, *, rho_a: float = 4 / 255,
                      rho_r: float | None = None, experiment: str = "methods", extra: dict | None = None) -> dict:
    """Algorithm 1 + 4 for one method and configuration, then the victims."""
    cfg = generator_config(method, steps, rho_u, rho_a, rho_r, extra=extra)
    protected, timing = protect_arrays(cfg, train, CPU)
    return {"experiment": experiment, "method": method, "rho_u": levels(rho_u),
            "gen_rho_a": levels(cfg.budget.rho_a), "gen_rho_r": levels(cfg.budget.rho_random), "M": steps,
            "lr_step": cfg.trainer.lr_step,
            "noise": noise_summary(protected.noise, train.labels, rho_u),
            "victims": victim_accuracies(protected, test, radii, victim), "generation_s": sum(timing.values())}


def plan(quick: bool) -> dict:
    """The grid: fig5 as (ρ_u, snapshot steps); methods as (name, ρ_u) at one M; the learning-rate probe as
    (ρ_u, M, lr_step); generator radii as (ρ_u, M, generator ρ_a, ρ_r) in grey levels."""
    if quick:
        return {"victim": dataclasses.replace(VICTIM, steps=60), "radii": [0.0, 4 / 255],
                "fig5": [(16 / 255, [5, 20])], "robustness": None,
                "methods": [("em", 16 / 255)], "methods_steps": 20, "lr_decay": [], "generator_radii": []}
    return {"victim": VICTIM, "radii": [0.0, 2 / 255, 4 / 255],
            "fig5": [(8 / 255, [25, 50, 100, 200]), (16 / 255, [25, 100, 200, 300])],
            "robustness": {"theta_steps": 4, "delta_steps": 40},
            "methods": [("em", 8 / 255), ("rem", 8 / 255), ("em", 16 / 255)], "methods_steps": 100,
            "lr_decay": [(16 / 255, 100, 40)],  # ×0.1 at 40 % and 80 % of M, the official schedule's shape
            "generator_radii": [(16 / 255, 100, 8, 8)]}


def run(quick: bool = False, verbose: bool = True) -> dict:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    p = plan(quick)
    train, test = load_digits("train"), load_digits("test")
    victim, radii = p["victim"], p["radii"]

    def log(cell: dict) -> dict:
        if verbose:
            print("cell " + json.dumps(cell, sort_keys=True), flush=True)
        return cell

    clean = log({"experiment": "clean", "victims": victim_accuracies(train, test, radii, victim)})
    curves = []
    for rho_u, at_steps in p["fig5"]:
        curves += fig5(rho_u, at_steps, radii, victim, train, test, robustness=p["robustness"], log=log)
    m = p["methods_steps"]
    methods = [log(protect_and_score(name, m, rho_u, radii, victim, train, test)) for name, rho_u in p["methods"]]
    methods += [log(protect_and_score("sem", steps, rho_u, radii, victim, train, test, experiment="lr_decay",
                                      extra={"trainer.lr_step": lr_step})) for rho_u, steps, lr_step in p["lr_decay"]]
    gen_radii = [log(protect_and_score("sem", steps, rho_u, radii, victim, train, test, rho_a=a / 255, rho_r=r / 255,
                                       experiment="generator_radii")) for rho_u, steps, a, r in p["generator_radii"]]
    return {"bench": "evidence", "quick": quick, "data": "digits (1437 train / 360 test, 32x32x1)",
            "scale": {"generator": SCALE, "victim": dataclasses.asdict(victim)},
            "clean": clean["victims"], "fig5": curves, "methods": methods, "generator_radii": gen_radii,
            "wall_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
