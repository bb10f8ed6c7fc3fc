"""``sem-dist demo`` end to end at a tiny size on the session's real local Ray: the protection goes through
Ray Train (2 workers) and Ray Data (2 actors), and the report (md, self-contained html, json, figures) holds
exactly the numbers the run produced."""
from __future__ import annotations

import base64
import json
import re

import numpy as np
from PIL import Image

from sem_dist.analysis.demo_report import pct, seconds
from sem_dist.data import load_dataset
from sem_dist.demo import DemoSettings, run_demo

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_protects_through_ray_and_reports_the_numbers_it_measured(ray_cluster, tmp_path):
    out = tmp_path / "demo"
    settings = DemoSettings(out=str(out), steps=2, batch_size=16, solver_steps=1, samples=1, attack_steps=1,
                            victim_epochs=0.25, victim_adv_steps=1, per_class=1, device="cpu")
    lines: list[str] = []
    run_demo(settings, say=lines.append)

    # it joined the session's Ray (token auth and loopback are tested with connect() itself) and left it up
    assert ray_cluster.is_initialized()
    stages = [line.split("]")[0] + "]" for line in lines if line.startswith("sem-dist demo [")]
    assert stages == [f"sem-dist demo [{i}/6]" for i in range(1, 7)]

    record = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()

    # the product's real path: canonical shards in, Ray Train with 2 workers, Ray Data with 2 actors
    assert record["data"]["train_shards"] == 2
    clean = load_dataset(str(out / "data" / "train"))
    for method in ("sem", "rem"):
        g = record["generation"][method]
        assert g["train_workers"] == 2 and g["train_feed"] == "object-store"
        assert g["regeneration"]["engine"] == "ray-data" and g["regeneration"]["actors"] == 2
        protected = load_dataset(g["uri"])
        assert protected.ids == clean.ids and (protected.labels == clean.labels).all()
        noise = protected.images.astype(np.int16) - clean.images.astype(np.int16)
        assert 0 < np.abs(noise).max() == g["noise"]["linf_levels"] <= 16  # ρ_u = 16/255
        # its generation times, as the report prints them
        for t in (g["timings"]["fit_s"], g["timings"]["regenerate_s"], g["wall_s"]):
            assert seconds(t) in md and seconds(t) in html

    # the accuracy table: clean / SEM / REM × standard / adversarial, each the victim's final test accuracy
    acc = record["accuracy"]
    assert set(acc) == {"clean", "sem", "rem"} and all(set(v) == {"standard", "adversarial"} for v in acc.values())
    for key, victim in record["victims"].items():
        name, kind = key.split("/")
        assert acc[name][kind] == victim["test_acc"] == victim["runs"][0]["curve"][-1]["test_acc"]
        assert victim["victim"]["adv_rho"] == (0.0 if kind == "standard" else 4 / 255)
        assert record["curves"][name][kind][-1][1] == acc[name][kind]
    for name, label in (("clean", "clean"), ("sem", "SEM"), ("rem", "REM")):
        std, adv = pct(acc[name]["standard"]), pct(acc[name]["adversarial"])
        assert f"| {label} | {std} | {adv} |" in md
        assert f"<td>{label}</td><td>{std}</td><td>{adv}</td>" in html

    # figures: PNGs next to the markdown, embedded byte for byte in the html, which loads nothing from outside
    for name in ("samples.png", "learning_curves.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG)
        assert f"]({name})" in md
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
    assert re.findall(r'src="([a-z]+):', html) == ["data", "data"]
    with Image.open(out / "samples.png") as grid:  # one column per class, five rows: clean + 2 × (noise, protected)
        assert grid.width > 1.5 * grid.height
    # why the radius, with the evidence it rests on, and the settings of this run
    assert "Why ρ_u = 16/255" in md and "76.9 %" in md and "68.6 %" in md
    assert "M = 2 steps of batch 16" in md and "K_u = 1" in html


def test_demo_refuses_a_bad_radius_before_starting_anything(cli, tmp_path):
    code, out, err = cli("demo", "--out", tmp_path / "d", "--rho-u", "lots")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("sem-dist demo: error: --rho-u") and "lots" in err
    assert not (tmp_path / "d").exists()
