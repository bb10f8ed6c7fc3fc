"""Correlation of protection performance with a robustness term (Table 10): Pearson (linear),
Spearman and Kendall (rank), all from ``scipy.stats``."""
from __future__ import annotations

import math
import warnings
from typing import Sequence

from scipy import stats

METRICS = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _finite(v: float) -> float | None:
    """JSON has no NaN: an undefined coefficient (e.g. a constant input) becomes None."""
    return float(v) if math.isfinite(v) else None


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, dict[str, float | None]]:
    """``{"pearson": {"r", "p"}, "spearman": {...}, "kendall": {...}}`` between paired samples x and y."""
    if len(x) != len(y):
        raise ValueError(f"correlation needs paired samples, got {len(x)} and {len(y)} values")
    if len(x) < 3:
        raise ValueError(f"correlation needs at least 3 points, got {len(x)}")
    out = {}
    for name, fn in METRICS.items():
        with warnings.catch_warnings():  # a constant input is reported as None below, not as a warning
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            res = fn(list(map(float, x)), list(map(float, y)))
        out[name] = {"r": _finite(res.statistic), "p": _finite(res.pvalue)}
    return out
