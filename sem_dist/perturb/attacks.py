"""Inner maximisers for REM's noise-side perturbation (Table 14), behind one signature:

``attack(model, x, labels, rho, alpha, steps, *, stream=None) -> δ`` with ‖δ‖∞ ≤ ρ, x + δ ∈ [0, 1].
"""
from __future__ import annotations

from typing import Callable

from .pgd import pgd

ATTACKS: dict[str, Callable] = {"pgd": pgd}


def get_attack(name: str) -> Callable:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(sorted(ATTACKS))}") from None
