"""`sem-dist analyze projection` (Figure 7) on 40 digits with a few-step REM generator and victim."""
from __future__ import annotations

import json

import numpy as np
import pytest

TINY = ["--points", "12", "--steps", "2", "--ku", "2", "--ka", "2", "--samples", "1", "--batch-size", "20",
        "--arch", "small_cnn", "--victim-steps", "4", "--victim-adv-steps", "2", "--rho-a", "4/255"]


@pytest.fixture(scope="module")
def tiny_train(tiny_digits, tmp_path_factory):
    from sem_dist.data import save_dataset

    path = tmp_path_factory.mktemp("projection") / "train"
    save_dataset(tiny_digits[0], str(path))
    return str(path)


def test_projection_writes_figure_and_three_groups(cli, tiny_digits, tiny_train, tmp_path):
    out = tmp_path / "proj"
    code, stdout, err = cli("analyze", "projection", "--data", tiny_train, *TINY, "--out", out, "--json")
    assert code == 0, err[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    record = json.loads((out / "projection.json").read_text())
    assert (out / "projection.png").stat().st_size > 5000
    groups = ("rem_adversarial", "sem_random", "victim_adversarial")
    assert record["counts"] == summary["counts"] == dict.fromkeys(groups, 12)
    assert {g: len(p) for g, p in record["points"].items()} == dict.fromkeys(groups, 12)
    assert all(len(xy) == 2 and all(np.isfinite(xy)) for p in record["points"].values() for xy in p)
    # every group within its radius ρ_a = ρ_r = 4/255 (grey levels), and none of them all zero
    assert all(0 < record["linf_levels"][g] <= 4 + 1e-4 for g in groups), record["linf_levels"]
    assert record["projection"] == summary["projection"] in ("umap", "tsne")
    assert summary["projection"].upper() in stdout
    for space in ("summary_2d", "summary_pixels"):
        s = record[space]
        assert abs(sum(s["victim_nn_share"].values()) - 1) < 1e-9
        assert s["covers_best"] == min(s["coverage_distance"], key=s["coverage_distance"].get)
    # SEM's δ^r is uniform in ±ρ_r per pixel: its distance to its centroid in grey levels is about
    # sqrt(D · ρ_r² / 3) for D pixels (a little less: the mean of a norm is below its root mean square)
    pixels = np.prod(tiny_digits[0].images.shape[1:])
    assert 0.85 < record["summary_pixels"]["spread"]["sem_random"] / np.sqrt(pixels * 16 / 3) < 1.0


def test_coverage_summary_names_the_group_nearest_the_victims():
    from sem_dist.analysis.projection import coverage_summary

    rng = np.random.default_rng(0)
    victim = rng.normal(size=(50, 2))
    points = {"victim_adversarial": victim, "sem_random": victim + 0.05 * rng.normal(size=(50, 2)),
              "rem_adversarial": rng.normal(size=(50, 2)) * 0.1 + 5}
    s = coverage_summary(points)
    assert s["covers_best"] == "sem_random" and s["victim_nn_share"]["sem_random"] == 1.0
    assert s["coverage_distance"]["sem_random"] < 0.2 < 4 < s["coverage_distance"]["rem_adversarial"]
    assert s["spread"]["rem_adversarial"] < s["spread"]["sem_random"]


@pytest.mark.parametrize("args, message", [
    (["--points", "41"], "--points must be in [2, 40]"),
    (["--victim-adv-rho", "0"], "--victim-adv-rho must be > 0"),
    (["--projection", "pca"], "unknown projection 'pca'"),
])
def test_bad_input_is_one_line_and_writes_nothing(cli, tiny_train, tmp_path, args, message):
    code, _, err = cli("analyze", "projection", "--data", tiny_train, *TINY, *args, "--out", tmp_path / "proj")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("sem-dist analyze: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "proj").exists()
