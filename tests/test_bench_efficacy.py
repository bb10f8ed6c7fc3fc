"""The efficacy bench's table logic (python -m sem_dist.bench efficacy): shared generators, mean ± std over
seeds, the JSON shape and the Markdown that carries the numbers, on a tiny grid through real Ray tasks."""
from __future__ import annotations

import json

import pytest

from sem_dist.bench import efficacy


def test_plan_shares_generators_across_tables():
    cells = efficacy.plan(False, [0])
    gens = {c.victim.generator for c in cells} - {None}
    # Table 2: EM, TAP, SC, NTGA + REM and SEM at each of 5 radii; Table 1/7 add REM-δu, REM-θ, δr-only,
    # neither; Table 4 (16/255) adds EM, TAP, NTGA, REM, SEM; Tables 5 and 11 reuse Table 2's 4/255 generators
    assert len(gens) == 4 + 10 + 4 + 5
    sem = {g.rho_a for g in gens if g.method == "sem" and g.rho_u == 8}
    assert sem == {0, 1, 2, 3, 4}  # the generator's ρ_a = ρ_r follows the victim's column
    assert all(g.rho_a is None for g in gens if g.method in ("em", "tap", "sc", "ntga", "eot-minmin"))
    assert len(efficacy.plan(False, [0, 6178, 42])) == 3 * len(cells)


def test_mean_and_std_over_seeds_and_markdown():
    g = efficacy.Generator("sem", 8, 4, 0)
    cells = [efficacy.Cell("table2", "sem", "4", efficacy.Victim(efficacy.Generator("sem", 8, 4, s), 4, s))
             for s in (0, 6178, 42)]
    acc = {c.victim: a for c, a in zip(cells, (0.5, 0.7, 0.6))}
    table = efficacy.assemble(cells, acc)
    cell = table["table2"]["sem"]["4"]
    assert cell["mean"] == pytest.approx(0.6) and cell["std"] == pytest.approx(0.1) and cell["n"] == 3
    assert cell["per_seed"] == {"0": 0.5, "6178": 0.7, "42": 0.6}
    assert efficacy.means(table) == {"table2": {"sem": {"4": 0.6}}}
    md = efficacy.markdown(table, {"sem": 12.3}, {"data": "digits", "factor": 0.02, "seeds": [0, 6178, 42]})
    assert "| sem | 60.0 ± 10.0 | 12 |" in md and "ρ_a = 4/255" in md
    assert g.name == "sem u8 a4 s0"


def test_tiny_grid_through_ray_tasks(ray_cluster, tmp_path):
    out = tmp_path / "eff"
    result = efficacy.run(verbose=False, out=str(out), seeds="0,1", factor=1 / 5000, methods=("clean", "sem"),
                          radii=(0, 4), tables=("table2",), train_size=48)
    assert set(result["table"]) == {"clean", "sem"}
    assert all(set(cols) == {"0", "4"} for cols in result["table"].values())
    assert all(0.0 <= a <= 1.0 for cols in result["table"].values() for a in cols.values())
    assert result["tables"]["table2"] == result["table"] and result["generation_s"]["sem"] > 0
    record = json.loads((out / "efficacy.json").read_text())
    # SEM at ρ_a 0 and 4 for each of 2 seeds; 2 × 2 victims per seed
    assert len(record["generators"]) == 4 and len(record["victims"]) == 8
    assert {g["M"] for g in record["generators"]} == {1}  # 5000 × 1/5000
    md = (out / "efficacy.md").read_text()
    for method, cols in result["table"].items():
        per_seed = {c: [v["test_acc"] for v in record["victims"] if v["rho_a"] == int(c)
                        and (v["generator"] or {}).get("method", "clean") == method] for c in cols}
        std = {c: efficacy.mean_std(per_seed[c])[1] for c in cols}
        assert result["table_std"][method] == {c: round(std[c], 4) for c in cols}
        assert f"| {method} | " + " | ".join(f"{100 * cols[c]:.1f} ± {100 * std[c]:.1f}" for c in ("0", "4")) in md
    assert (out / "table2.png").read_bytes()[:4] == b"\x89PNG"
    json.dumps(result)  # the bench's last line
