"""Figures: victim learning curves (next to each evaluation record) and Figure 3's scatter of
protection performance against the robustness terms."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and clusters
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(record: dict, path: str | Path) -> None:
    """Clean test accuracy (solid) and, with early stopping, validation accuracy (dashed) against the
    training step, one colour per seed; a dotted line marks where early stopping ended a run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, run in enumerate(record["runs"]):
        colour = f"C{i}"
        steps = [p["step"] for p in run["curve"]]
        ax.plot(steps, [p["test_acc"] for p in run["curve"]], color=colour, marker=".",
                label=f"seed {run['seed']}: test {100 * run['test_acc']:.1f}%")
        if run["early_stopping"]:
            ax.plot(steps, [p["val_acc"] for p in run["curve"]], color=colour, linestyle="--", label="validation")
            ax.axvline(run["early_stopping"]["best_step"], color=colour, linestyle=":")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    method = (record.get("protection") or {}).get("method", "unprotected")
    victim = record["victim"]
    ax.set_title(f"{victim['arch']} on {method} data (ρ_a = {255 * victim['adv_rho']:.0f}/255, "
                 f"filter {victim['filter']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_victim_curves(curves: dict[tuple[str, str], list[tuple[float, float]]], path: str | Path,
                       title: str) -> None:
    """Clean test accuracy against the training epoch, one line per (training data, training kind):
    a colour per training data, solid for standard and dashed for adversarial training."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    colours = {}
    for (data, kind), points in curves.items():
        colour = colours.setdefault(data, f"C{len(colours)}")
        ax.plot([e for e, _ in points], [a for _, a in points], color=colour, marker=".",
                linestyle="-" if kind == "standard" else "--", label=f"{data}, {kind}")
    ax.set_xlabel("victim training epoch")
    ax.set_ylabel("clean test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_robustness(analysis: dict, path: str | Path) -> None:
    """Figure 3: protection performance F against R_θ and against R_δu, one point per snapshot."""
    plt = _pyplot()
    rows = analysis["snapshots"]
    f = [r["F"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
    for ax, key, label in zip(axes, ("R_theta", "R_delta_u"), ("$\\mathcal{R}_\\theta$", "$\\mathcal{R}_{\\delta^u}$")):
        ax.scatter([r[key] for r in rows], f)
        for r in rows:
            ax.annotate(str(r["step"]), (r[key], r["F"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        pearson = analysis["correlations"][key]["pearson"]["r"]
        ax.set_title(f"r = {pearson:.3f}" if pearson is not None else "r undefined", fontsize=9)
        ax.set_xlabel(label)
    axes[0].set_ylabel("protection performance F = 1 − Acc")
    fig.suptitle(f"{analysis['method']}: snapshots of Algorithm 1 (labels: step)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_projection(analysis: dict, path: str | Path) -> None:
    """Figure 7: the three perturbation groups in the 2-D projection, with the coverage distances."""
    plt = _pyplot()
    labels = {"rem_adversarial": "REM $\\delta^a$ (noise training)",
              "sem_random": "SEM $\\delta^r$ (noise training)",
              "victim_adversarial": "victim's adversarial training $\\delta$"}
    fig, ax = plt.subplots(figsize=(6, 5))
    for (group, pts), marker in zip(analysis["points"].items(), ("o", "s", "^")):
        xy = list(zip(*pts)) or [[], []]
        ax.scatter(xy[0], xy[1], s=10, alpha=0.6, marker=marker, label=f"{labels.get(group, group)} ({len(pts)})")
    cov = analysis["summary_2d"]["coverage_distance"]
    ax.set_title(f"{analysis['projection'].upper()} of perturbations; coverage of the victim's: "
                 f"REM {cov['rem_adversarial']:.2f}, SEM {cov['sem_random']:.2f} (lower covers better)", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
