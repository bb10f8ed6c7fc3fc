"""Figure 7: the perturbations REM and SEM train their noise against, next to the perturbations a victim's
adversarial training actually applies, projected to 2-D (UMAP as in the paper; scikit-learn's t-SNE when
umap-learn is not installed).

Three groups of N perturbations, one per image of the same N training images (ℓ∞, [0,1] pixel units):
- ``rem_adversarial``: REM's δ^a, the inner maximisation of its noise step (Eq. 6): PGD (K_a steps, radius
  ρ_a) on t(x + δ^u) against the trained REM surrogate, with δ^u that surrogate's noise for x;
- ``sem_random``: SEM's δ^r ~ U(−ρ_r, ρ_r) i.i.d. per element (Eq. 10), the same solver's other inner choice;
- ``victim_adversarial``: the PGD δ (the victim's ρ_a and steps, α = ρ_a/5) that a victim adversarially
  trained on the protected images applies to its augmented inputs t(x + δ^u), at the end of its training.

The summary quantifies the paper's claim ("the random perturbation in SEM is more aligned with the real
perturbation during evaluation"), both in the 2-D plane and, free of the projection's distortions, in the
original pixel space (ℓ2 in grey levels, 0–255 units): for each method's group, the distance of its
centroid to the victim group's, its coverage distance (mean distance from a victim point to the group's
nearest point; lower = the group covers the victim's perturbations better), the share of victim points
whose nearest non-victim neighbour is in the group, and every group's spread (mean distance to its
centroid; the paper calls REM's perturbations "monotonous").
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import torch

from ..data.arrays import ArrayDataset
from ..perturb.methods import MinMinMax
from ..perturb.noise import inner_perturbation, solve_noise
from ..runtime.rng import CounterStream
from ..training.pgd import frozen, pgd
from ..training.transforms import get_transform
from ..victims.train import VictimConfig

REM, SEM, VICTIM = "rem_adversarial", "sem_random", "victim_adversarial"
GROUPS = (REM, SEM, VICTIM)
PROJECTIONS = ("auto", "umap", "tsne")


def perturbation_groups(rem: MinMinMax, rho_r: float, protected: ArrayDataset, victim_model: torch.nn.Module,
                        victim: VictimConfig, indices: np.ndarray, device: torch.device,
                        batch_size: int = 128) -> dict[str, np.ndarray]:
    """The three groups for the images ``indices`` of ``protected`` (whose ``clean_images`` REM perturbs),
    each an array (N, C·H·W) in [0,1] units. Draws are keyed by (the REM config's seed, image id)."""
    if rem.spec.inner != "adversarial":
        raise ValueError(f"{rem.cfg.method} does not train against adversarial perturbations (inner "
                         f"{rem.spec.inner!r}); Figure 7 needs REM's")
    sem_spec = dataclasses.replace(rem.spec, inner="random", rho_r=rho_r)
    clean = protected.with_images(protected.clean_images(), None)
    victim_t = get_transform(victim.transform, protected.image_side)
    out: dict[str, list] = {g: [] for g in GROUPS}
    victim_model.eval()
    for start in range(0, len(indices), batch_size):
        ix = torch.as_tensor(indices[start:start + batch_size])
        ids = [protected.ids[i] for i in ix.tolist()]
        x, y = (t.to(device) for t in clean.batch(ix))
        stream = CounterStream.for_samples(rem.cfg.seed, ids, device)
        with frozen(rem.model):
            delta_u = solve_noise(rem.model, x, y, rem.spec, stream)
            xt = rem.spec.transform.sample(x + delta_u, stream)
            out[REM].append(inner_perturbation(rem.model, xt, y, rem.spec, stream))
        out[SEM].append(inner_perturbation(rem.model, xt, y, sem_spec, stream))
        xp, yp = (t.to(device) for t in protected.batch(ix))
        xpt = victim_t.sample(xp, stream)
        with frozen(victim_model):
            out[VICTIM].append(pgd(victim_model, xpt, yp, victim.adv_rho, victim.adv_rho / victim.adv_alpha_div,
                                   victim.adv_steps, stream=stream, amp=victim.amp))
    return {g: torch.cat(v).flatten(1).cpu().numpy().astype(np.float32) for g, v in out.items()}


def resolve_projection(name: str) -> str:
    if name not in PROJECTIONS:
        raise ValueError(f"unknown projection {name!r}; choose one of {', '.join(PROJECTIONS)}")
    if name == "auto":
        return "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if name == "umap" and importlib.util.find_spec("umap") is None:
        raise ValueError("--projection umap needs umap-learn (pip install umap-learn==0.5.12); use tsne")
    return name


def project_2d(features: np.ndarray, projection: str, seed: int) -> np.ndarray:
    """(n, 2) coordinates of the rows of ``features`` by UMAP or t-SNE, seeded."""
    n = len(features)
    if n < 4:
        raise ValueError(f"a 2-D projection needs at least 4 points, got {n}")
    if projection == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():  # a seed makes UMAP single-threaded, which it warns about
            warnings.simplefilter("ignore", UserWarning)
            return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                random_state=seed).fit_transform(features)


def _nearest_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row of ``a``'s distance to its nearest row of ``b``."""
    from scipy.spatial.distance import cdist

    return cdist(a, b).min(axis=1)


def coverage_summary(points: dict[str, np.ndarray]) -> dict:
    """How well each method's group covers the victim's (see the module's docstring), for points in any
    space; ``covers_best`` names the method group with the lower coverage distance."""
    victim = points[VICTIM]
    methods = (REM, SEM)
    centroids = {g: points[g].mean(axis=0) for g in GROUPS}
    near = np.stack([_nearest_distance(victim, points[g]) for g in methods])  # (2, n_victim)
    coverage = {g: float(near[i].mean()) for i, g in enumerate(methods)}
    share = {g: float((near.argmin(axis=0) == i).mean()) for i, g in enumerate(methods)}
    return {"centroid_distance_to_victim": {g: float(np.linalg.norm(centroids[g] - centroids[VICTIM]))
                                            for g in methods},
            "coverage_distance": coverage, "victim_nn_share": share,
            "spread": {g: float(np.linalg.norm(points[g] - centroids[g], axis=1).mean()) for g in GROUPS},
            "covers_best": min(methods, key=lambda g: coverage[g])}


def projection_analysis(groups: dict[str, np.ndarray], projection: str, seed: int) -> dict:
    """2-D points of every group and the coverage summaries in 2-D and in pixel space (grey levels)."""
    order = list(GROUPS)
    features = np.concatenate([groups[g] for g in order])
    flat = project_2d(features, projection, seed)
    bounds = np.cumsum([0] + [len(groups[g]) for g in order])
    points = {g: flat[bounds[i]:bounds[i + 1]] for i, g in enumerate(order)}
    return {"projection": projection, "counts": {g: len(groups[g]) for g in order},
            "linf_levels": {g: float(255 * np.abs(groups[g]).max()) for g in order},
            "summary_2d": coverage_summary(points),
            "summary_pixels": coverage_summary({g: 255 * groups[g] for g in order}),
            "points": {g: np.round(points[g], 4).tolist() for g in order}}
