"""The paper's sensitivity studies from a search's trials: the results table (CSV and Markdown), Figure 5
(victim accuracy against the generator's steps M and against the sample count J) and a Table-6 style
heat map (accuracy over ρ_r × the attacker's ρ_a).

A row is one trial: its searched config values plus ``test_acc`` (the victim's clean test accuracy at its
last report), timings and status. Pure functions over plain rows: nothing here knows of Ray.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .figures import _pyplot

RADIUS_KEYS = ("budget.rho_u", "budget.rho_a", "budget.rho_r", "victim.adv_rho")
FIGURE5 = (("trainer.steps", "generator steps M"), ("solver.samples", "samples J"))


def fmt_value(key: str, value) -> str:
    """Radii as k/255 when they are whole grey levels; floats with 4 significant digits."""
    if value is None or value == "":
        return "ρ_a" if key == "budget.rho_r" else ""
    if key in RADIUS_KEYS and isinstance(value, (int, float)):
        levels = 255 * value
        return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{value:.4g}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def varying(rows: Sequence[dict], key: str) -> list:
    """The distinct values ``key`` takes over ``rows`` (sorted; None first), or [] when absent."""
    values = {r.get(key) for r in rows if key in r}
    return sorted(values, key=lambda v: (v is not None, v if v is not None else 0))


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return buf.getvalue()


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    def cell(r, c):
        v = r.get(c)
        if c in ("test_acc", "objective") and isinstance(v, float):
            return f"{100 * v:.2f}%"
        if c.endswith("_s") and isinstance(v, float):
            return f"{v:.1f}"
        return fmt_value(c, v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _mean_by(rows: Sequence[dict], keys: Sequence[str]) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("test_acc") is not None:
            groups[tuple(r.get(k) for k in keys)].append(r["test_acc"])
    return {k: sum(v) / len(v) for k, v in groups.items()}


def plot_figure5(rows: Sequence[dict], path: str | Path) -> bool:
    """Accuracy against M and against J (each averaged over the other keys; dots are single trials).
    Draws the panels whose key takes at least two values; False (no file) when neither does."""
    panels = [(k, label) for k, label in FIGURE5 if len(varying(rows, k)) >= 2]
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        means = _mean_by(rows, [key])
        xs = sorted(k[0] for k in means)
        ax.plot(xs, [100 * means[(x,)] for x in xs], marker="o", label="mean over other keys")
        ax.scatter([r[key] for r in rows if r.get("test_acc") is not None],
                   [100 * r["test_acc"] for r in rows if r.get("test_acc") is not None], s=12, alpha=0.5,
                   color="grey", label="trials")
        ax.set_xlabel(label)
        ax.set_ylabel("victim clean test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 5: effect of M and J (lower = better protection)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def attacker_radius_key(rows: Sequence[dict]) -> str | None:
    """The ρ_a axis of Table 6: the victim's adversarial-training radius when it varies, else the
    generator's ρ_a (None when neither varies)."""
    for key in ("victim.adv_rho", "budget.rho_a"):
        if len(varying(rows, key)) >= 2:
            return key
    return None


def plot_table6(rows: Sequence[dict], path: str | Path) -> bool:
    """Heat map of mean accuracy over ρ_r (columns) × ρ_a (rows), annotated like Table 6; False (no
    file) unless both vary."""
    a_key = attacker_radius_key(rows)
    r_values = varying(rows, "budget.rho_r")
    if a_key is None or len(r_values) < 2:
        return False
    a_values = varying(rows, a_key)
    means = _mean_by(rows, [a_key, "budget.rho_r"])
    grid = [[means.get((a, r), math.nan) for r in r_values] for a in a_values]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(r_values) + 2.5, 0.6 * len(a_values) + 1.8))
    im = ax.imshow([[100 * v for v in row] for row in grid], cmap="viridis_r", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 else "black")
    ax.set_xticks(range(len(r_values)), [fmt_value("budget.rho_r", v) for v in r_values])
    ax.set_yticks(range(len(a_values)), [fmt_value(a_key, v) for v in a_values])
    ax.set_xlabel("random-perturbation radius ρ_r")
    ax.set_ylabel("adversarial training ρ_a" if a_key == "victim.adv_rho" else "generator ρ_a")
    fig.colorbar(im, ax=ax, label="victim test accuracy (%)")
    ax.set_title("Table 6: ρ_r × ρ_a", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
