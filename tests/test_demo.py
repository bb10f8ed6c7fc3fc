"""``sem-dist demo`` end to end at a tiny size on the session's real local Ray: every (method, seed) generator
and every victim runs as a Ray task, and the report (md, self-contained html, json, figures) holds exactly the
numbers the run produced — each cell mean ± std over the seeds, each comparing sentence computed from them."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image

from sem_dist.analysis.demo_report import comparisons, pct_pm, seconds
from sem_dist.commands.demo import DemoSettings, run_demo
from sem_dist.data import load_dataset
from sem_dist.victims.evaluate import mean_std

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_every_seed_as_ray_tasks_and_reports_mean_and_spread(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    seeds = (0, 1)
    settings = DemoSettings(out=str(out), seeds=seeds, steps=2, batch_size=16, solver_steps=1, samples=1,
                            attack_steps=1, victim_epochs=0.25, victim_adv_steps=1, per_class=1, device="cpu")
    lines: list[str] = []
    run_demo(settings, say=lines.append)

    # it joined the session's Ray (token auth and loopback are tested with connect() itself) and left it up
    assert ray_cluster.is_initialized()
    stages = [line.split("]")[0] + "]" for line in lines if line.startswith("sem-dist demo [")]
    assert stages == [f"sem-dist demo [{i}/4]" for i in range(1, 5)]

    record = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()

    # one protected canonical copy per (method, seed), each made with its own seed: the clean data plus noise
    assert record["data"]["train_shards"] == 2
    clean = load_dataset(str(out / "data" / "train"))
    for method in ("sem", "rem"):
        g = record["generation"][method]
        assert sorted(g["seeds"]) == ["0", "1"]
        noises = []
        for seed, rec in g["seeds"].items():
            protected = load_dataset(rec["uri"])
            assert protected.meta["manifest"]["protection"]["seed"] == int(seed) == rec["seed"]
            assert protected.ids == clean.ids and (protected.labels == clean.labels).all()
            noise = protected.images.astype(np.int16) - clean.images.astype(np.int16)
            assert 0 < np.abs(noise).max() == rec["noise"]["linf_levels"] <= 16  # ρ_u = 16/255
            noises.append(noise)
        assert (noises[0] != noises[1]).mean() > 0.3  # another seed, another noise
        for t in (g["fit_s"], g["regenerate_s"], g["wall_s"]):  # mean times, as the report prints them
            assert seconds(t) in md and seconds(t) in html

    # the table: clean / SEM / REM × standard / adversarial, each the mean ± std of the per-seed victims
    acc = record["accuracy"]
    assert set(acc) == {"clean", "sem", "rem"} and all(set(v) == {"standard", "adversarial"} for v in acc.values())
    for key, victim in record["victims"].items():
        name, kind = key.split("/")
        cell = acc[name][kind]
        per_seed = [run["test_acc"] for run in victim["runs"]]
        assert [run["seed"] for run in victim["runs"]] == list(seeds) and cell["n"] == 2
        assert (cell["mean"], cell["std"]) == pytest.approx(mean_std(per_seed))
        assert all(run["curve"][-1]["test_acc"] == run["test_acc"] for run in victim["runs"])
        assert victim["victim"]["adv_rho"] == (0.0 if kind == "standard" else 4 / 255)
        assert record["curves"][name][kind][-1][1] == pytest.approx(cell["mean"])
    for name, label in (("clean", "clean"), ("sem", "SEM"), ("rem", "REM")):
        std, adv = pct_pm(acc[name]["standard"]), pct_pm(acc[name]["adversarial"])
        assert f"| {label} | {std} | {adv} |" in md
        assert f"<td>{label}</td><td>{std}</td><td>{adv}</td>" in html
    # the comparing sentences are the ones computed from these cells, and the report prints each of them
    assert record["comparisons"] == comparisons(acc) and len(record["comparisons"]) == 6
    for sentence in record["comparisons"]:
        assert sentence in md

    # figures: PNGs next to the markdown, embedded byte for byte in the html, which loads nothing from outside
    for name in ("samples.png", "learning_curves.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG)
        assert f"]({name})" in md
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
    assert re.findall(r'src="([a-z]+):', html) == ["data", "data"]
    with Image.open(out / "samples.png") as grid:  # one column per class, five rows: clean + 2 × (noise, protected)
        assert grid.width > 1.5 * grid.height
    # why the radius, and the settings of this run, the machine's kernels among them
    assert "Why ρ_u = 16/255" in md and "2 seeds (0, 1)" in md
    assert "M = 2 steps of batch 16" in md and "K_u = 1" in html and record["cpu"]["torch_capability"] in md


def _cell(mean, std):
    return {"mean": mean, "std": std, "n": 3, "per_seed": {}}


@pytest.mark.parametrize("sem, rem, verdict", [
    (_cell(0.50, 0.05), _cell(0.70, 0.05), "SEM is below REM under adversarial training (SEM 50.0 ± 5.0 %, REM 70.0 ± "
                                            "5.0 %): the paper's ordering."),
    (_cell(0.70, 0.05), _cell(0.50, 0.05), "REM is below SEM under adversarial training (SEM 70.0 ± 5.0 %, REM 50.0 ± "
                                            "5.0 %): the opposite of the paper's ordering."),
    (_cell(0.60, 0.08), _cell(0.55, 0.02), "SEM and REM are within each other's seed spread under adversarial "
                                            "training (SEM 60.0 ± 8.0 %, REM 55.0 ± 2.0 %): the paper's ordering "
                                            "does not show at this scale."),
])
def test_comparing_sentences_follow_the_means_and_spreads(sem, rem, verdict):
    accuracy = {"clean": {"standard": _cell(0.95, 0.01), "adversarial": _cell(0.60, 0.01)},
                "sem": {"standard": _cell(0.15, 0.03), "adversarial": sem},
                "rem": {"standard": _cell(0.20, 0.03), "adversarial": rem}}
    said = comparisons(accuracy)
    assert verdict in said
    assert "SEM lowers a standard victim beyond the seed spread (clean 95.0 ± 1.0 % → SEM 15.0 ± 3.0 %)." in said
    # within 3 + 3 points of each other: no ordering claimed under standard training
    assert any(s.startswith("SEM and REM are within each other's seed spread under standard training") for s in said)
    lowers_adv = [s for s in said if "an adversarially trained victim" in s]
    for s, cell in zip(lowers_adv, (sem, rem)):
        assert s.split(" ")[1] == ("lowers" if cell["mean"] + cell["std"] < 0.59 else "does")


def test_demo_refuses_a_bad_radius_before_starting_anything(cli, tmp_path):
    code, out, err = cli("demo", "--out", tmp_path / "d", "--rho-u", "lots")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("sem-dist demo: error: --rho-u") and "lots" in err
    assert not (tmp_path / "d").exists()
