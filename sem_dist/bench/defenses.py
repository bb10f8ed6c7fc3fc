"""Victim test accuracy under each defense (``sem-dist evaluate --defense``) for clean, EM-, REM- and
SEM-protected digits at CPU scale — where protection survives a sceptical data owner and where it does not.

Data: scikit-learn's digits (1,437 train / 360 test, 32×32 grayscale). Generators: the demo's CPU-scale
settings (``commands/demo.py`` DEMO_OVERRIDES: small CNN, 60 steps, ρ_u = 16/255, K_u = 5; REM and SEM with
J = 2, K_a = 3, ρ_a = 4/255; EM keeps its own J = 1 and no adversary). Victims: small CNN, batch 64,
the standard crop+flip. ``grayscale`` and ``iss`` are left out on this one-channel data: grayscale is the
identity there and ISS reduces to ``jpeg:10``, which is in the table.

Output: the last stdout line is ``{"table": {method: {defense: test accuracy}}, ...}``; lower = the
protection holds against that defense. ``--quick``: 8 victim epochs and five defenses.
"""
from __future__ import annotations

import platform
import sys
import time

import torch

from ..commands.demo import DEMO_OVERRIDES
from ..config import parse_fraction, resolve_config
from ..data.sources.digits import load_digits
from ..perturb.algorithm4 import noise_stats
from ..perturb.in_memory import protect_arrays
from ..victims.train import VictimConfig, train_victim

METHODS = ("clean", "em", "rem", "sem")
# the generator budget every method shares; the rest of DEMO_OVERRIDES configures the adversary EM has not
SHARED = ("trainer.arch", "trainer.steps", "trainer.batch_size", "trainer.lr_step", "solver.steps", "budget.rho_u")
QUICK_DEFENCES = ("none", "jpeg:10", "bdr:2", "noise-blur:8/255", "ueraser")
FULL_DEFENCES = QUICK_DEFENCES + ("jpeg:50", "bdr:3", "ueraser:5", "adv:4/255", "ueraser+adv:4/255")


def overrides_for(method: str) -> dict:
    return dict(DEMO_OVERRIDES) if method != "em" else {k: DEMO_OVERRIDES[k] for k in SHARED}


def victim_for(column: str, epochs: float, seed: int) -> VictimConfig:
    """A column name → victim config: ``adv:R`` is Madry adversarial training at R, ``A+adv:R`` composes."""
    defenses, adv = [], 0.0
    for part in column.split("+"):
        if part.startswith("adv:"):
            adv = parse_fraction(part[4:])
        elif part != "none":
            defenses.append(part)
    return VictimConfig(arch="small_cnn", epochs=epochs, batch_size=64, seed=seed, adv_rho=adv, adv_steps=5,
                        defenses=defenses)


def run(quick: bool = False, verbose: bool = True, *, methods: tuple[str, ...] = METHODS,
        columns: tuple[str, ...] | None = None, train_size: int | None = None, epochs: float | None = None) -> dict:
    """The table; keyword arguments shrink it further (a subset of methods/columns, the first
    ``train_size`` training digits) for machines that cannot afford even ``--quick``."""
    t_start = time.perf_counter()
    device = torch.device("cpu")
    train, test = load_digits("train"), load_digits("test")
    if train_size is not None:
        train = train.subset(range(train_size))
    epochs = epochs or (8 if quick else 15)
    columns = columns or (QUICK_DEFENCES if quick else FULL_DEFENCES)
    seed = 0

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    datasets, generation = {"clean": train}, {}
    noise = {}
    for method in methods:
        if method == "clean":
            continue
        cfg = resolve_config(method, train.image_side, overrides=overrides_for(method))
        cfg.seed = seed
        t0 = time.perf_counter()
        datasets[method], _ = protect_arrays(cfg, train, device)
        generation[method] = time.perf_counter() - t0
        noise[method] = noise_stats(datasets[method].noise)
        log(f"{method}: generated in {generation[method]:.0f}s, ℓ∞ {noise[method]['linf_levels']}/255")

    table: dict[str, dict[str, float]] = {m: {} for m in methods}
    victim_s: dict[str, float] = {}
    for column in columns:
        t0 = time.perf_counter()
        for method in methods:
            acc = train_victim(victim_for(column, epochs, seed), datasets[method], test, device).test_acc
            table[method][column] = round(acc, 4)
            log(f"{method:>5} | {column:<18} | {100 * acc:5.1f}%")
        victim_s[column] = round(time.perf_counter() - t0, 1)
    return {
        "table": table,
        "generation_s": {k: round(v, 1) for k, v in generation.items()},
        "victim_s_per_column": victim_s,
        "noise": noise,
        "settings": {"data": f"digits {len(train)} train / {len(test)} test, 32x32x1",
                     "generator_overrides": DEMO_OVERRIDES,
                     "victim": {"arch": "small_cnn", "epochs": epochs, "batch_size": 64, "seed": seed,
                                "adv_rho": "4/255 (K_a = 5) in adv columns"},
                     "skipped": {"grayscale": "identity on one-channel digits", "iss": "= jpeg:10 on one-channel data"}},
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
