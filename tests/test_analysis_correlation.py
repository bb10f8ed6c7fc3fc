"""Correlations of Table 10 come from scipy.stats; checked against hand-computed values."""
from __future__ import annotations

import json
import math

import pytest

from sem_dist.analysis.correlation import correlations


def test_fixed_example_matches_hand_computation():
    c = correlations([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])
    assert c["pearson"]["r"] == pytest.approx(6 / math.sqrt(60))  # Σdxdy / sqrt(Σdx² Σdy²)
    assert c["spearman"]["r"] == pytest.approx(7 / math.sqrt(90))  # Pearson of mid-ranks
    assert c["kendall"]["r"] == pytest.approx(6 / math.sqrt(80))  # tau-b: 7 concordant, 1 discordant, 2 y-ties
    assert all(0 < v["p"] < 1 for v in c.values())


def test_rank_metrics_see_monotone_nonlinear_relation_as_perfect():
    x = [1, 2, 3, 4, 5]
    c = correlations(x, [math.exp(3 * v) for v in x])
    assert c["spearman"]["r"] == pytest.approx(1.0)
    assert c["kendall"]["r"] == pytest.approx(1.0)
    assert c["pearson"]["r"] < 0.95
    assert correlations(x, [-v for v in x])["pearson"]["r"] == pytest.approx(-1.0)


def test_undefined_and_invalid_inputs():
    c = correlations([1, 2, 3], [5, 5, 5])  # constant: undefined, reported as None (JSON-safe)
    assert all(v["r"] is None for v in c.values())
    json.dumps(c)
    with pytest.raises(ValueError, match="at least 3 points"):
        correlations([1, 2], [3, 4])
    with pytest.raises(ValueError, match="paired"):
        correlations([1, 2, 3], [3, 4])
