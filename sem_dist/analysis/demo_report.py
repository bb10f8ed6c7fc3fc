"""The demo's report: ``report.json`` (the record, every number) and, from it, ``report.md`` and a
self-contained ``report.html`` with the accuracy table, generation times, the Figure-4 grid, the
victims' learning curves and the settings."""
from __future__ import annotations

import json
from pathlib import Path

from .document import Bullets, Document, Figure, Heading, Paragraph, Table, write_document

NAMES = {"clean": "clean", "sem": "SEM", "rem": "REM", "em": "EM"}

# Why the demo protects at 16/255: a statement about every method at once (no method is compared here), with
# the evidence's place; the numbers live in docs/evidence.md with their spread.
WHY_RADIUS = (
    "The paper protects at ρ_u = 8/255. At this CPU scale (digits, a small CNN, M in the hundreds instead of "
    "5,000) noise at 8/255 from any of the methods measured (EM, REM, SEM) left victims close to their clean "
    "accuracy (docs/evidence.md, `python -m sem_dist.bench evidence`), so the demo protects at 16/255, the radius "
    "of the paper's Table 4, where the protection becomes visible at CPU scale.")

# Two cells are ordered when their means differ by more than the sum of their standard deviations over
# seeds; otherwise they are "within the seed spread". With one seed there is no spread and the rule compares
# means alone (the report says so).
PAPER_ORDER = ("sem", "rem", "adversarial")  # the paper: SEM below REM under adversarial training


def pct(x: float | None) -> str:
    """How every accuracy appears in the report (and how tests find it there)."""
    return "–" if x is None else f"{100 * x:.1f} %"


def seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"


def pct_pm(cell: dict) -> str:
    """A cell as the report prints it: mean ± std over seeds, in %."""
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f} %"


def accuracy_table(record: dict) -> Table:
    rho_a, n = record["settings"]["rho_a"], len(record["settings"]["seeds"])
    rows = [[NAMES.get(name, name), pct_pm(by["standard"]), pct_pm(by["adversarial"])]
            for name, by in record["accuracy"].items()]
    return Table([f"training data (mean ± std, {n} seeds)", "standard training",
                  f"adversarial training (ρ_a = {rho_a})"], rows)


def order(a: dict, b: dict) -> int:
    """-1 when cell ``a`` is below ``b`` beyond the seed spread, +1 above it, 0 within it."""
    d = a["mean"] - b["mean"]
    if abs(d) <= a["std"] + b["std"]:
        return 0
    return -1 if d < 0 else 1


def comparisons(accuracy: dict) -> list[str]:
    """Every sentence of the report that compares training data, computed from the cells."""
    out = []
    clean = accuracy.get("clean", {})
    kinds = {"standard": "a standard victim", "adversarial": "an adversarially trained victim"}
    for m, by in accuracy.items():
        if m == "clean":
            continue
        name = NAMES.get(m, m)
        for kind, who in kinds.items():
            c, p = clean[kind], by[kind]
            nums = f"clean {pct_pm(c)} → {name} {pct_pm(p)}"
            if order(p, c) < 0:
                out.append(f"{name} lowers {who} beyond the seed spread ({nums}).")
            else:
                out.append(f"{name} does not lower {who} beyond the seed spread ({nums}).")
    methods = [m for m in accuracy if m != "clean"]
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for kind in kinds:
                na, nb = NAMES.get(a, a), NAMES.get(b, b)
                o = order(accuracy[a][kind], accuracy[b][kind])
                nums = f"{na} {pct_pm(accuracy[a][kind])}, {nb} {pct_pm(accuracy[b][kind])}"
                training = f"under {kind} training"
                if o == 0:
                    text = f"{na} and {nb} are within each other's seed spread {training} ({nums})"
                else:
                    low, high = (na, nb) if o < 0 else (nb, na)
                    text = f"{low} is below {high} {training} ({nums})"
                if {a, b} == set(PAPER_ORDER[:2]) and kind == PAPER_ORDER[2]:
                    sem_vs_rem = order(accuracy[PAPER_ORDER[0]][kind], accuracy[PAPER_ORDER[1]][kind])
                    text += {-1: ": the paper's ordering", 1: ": the opposite of the paper's ordering",
                             0: ": the paper's ordering does not show at this scale"}[sem_vs_rem]
                out.append(text + ".")
    return out


def generation_table(record: dict) -> Table:
    rows = [[NAMES.get(method, method), str(g["seeds"][next(iter(g["seeds"]))]["config"]["trainer"]["steps"]),
             seconds(g["fit_s"]), f"{g['train_steps_per_s']:.2f}" if g["train_steps_per_s"] else "–",
             seconds(g["regenerate_s"]), f"{g['images_per_s']:.0f}" if g["images_per_s"] else "–",
             seconds(g["wall_s"])] for method, g in record["generation"].items()]
    return Table(["method (mean over seeds)", "M", "Algorithm 1", "generator steps/s", "Algorithm 4", "images/s",
                  "protect, total"], rows)


def stage_table(record: dict) -> Table:
    t = record["timings"]
    rows = [["start (or join) Ray", seconds(t["ray_start_s"])],
            ["digits → canonical shards", seconds(t["convert_s"])],
            ["generators and victims (Ray tasks, in parallel)", seconds(t["cells_s"])],
            ["whole demo", seconds(t["total_s"])]]
    return Table(["stage", "wall time"], rows)


def settings_bullets(record: dict) -> Bullets:
    s, data, ray = record["settings"], record["data"], record["ray"]
    victim = next(iter(record["victims"].values()))
    steps = victim["runs"][0]["steps"]
    victim = victim["victim"]
    where = (f"an embedded local Ray started by the demo ({ray['cpus']:g} CPUs, {ray['gpus']:g} GPUs; 127.0.0.1, "
             f"auth: {ray['auth_mode']}, dashboard on loopback)" if ray["embedded"] else
             f"an already running Ray ({ray['nodes']} node(s), {ray['cpus']:g} CPUs), joined rather than started")
    load, cpu = record["load_average"], record["cpu"]
    kernels = ", ".join(f"{k}={v}" for k, v in cpu["kernel_env"].items()) or "the CPU's own"
    return Bullets([
        f"Data: {data['source']}, {data['train']} training / {data['test']} test images, canonical Parquet "
        f"(`{data['uri']}`, {data['train_shards']} training shards).",
        f"Ray: {where}; every generator and victim is a one-CPU Ray task.",
        f"Generators ({', '.join(NAMES.get(m, m) for m in record['generation'])}), one per seed "
        f"({', '.join(map(str, s['seeds']))}): `protect` (Algorithm 1, then Algorithm 4, a canonical dataset with its "
        f"manifest); {s['arch']}, M = {s['steps']} steps of batch {s['batch_size']}, K_u = {s['solver_steps']} "
        f"(α_u = ρ_u/5), J = {s['samples']}, K_a = {s['attack_steps']} (α_a = ρ_a/5), ρ_u = {s['rho_u']}, "
        f"ρ_a = ρ_r = {s['rho_a']}, SGD lr 0.1 constant. The paper: ResNet-18, M = 5000, batch 128, K_u = 10, "
        "J = 5, K_a = 10, ρ_u = 8/255.",
        f"Victims: {victim['arch']}, {s['victim_epochs']:g} epochs ({steps} steps of batch {victim['batch_size']}), "
        "SGD lr 0.1 (×0.1 at 40 % and 80 %), momentum 0.9, weight decay 5e-4, random crop (padding 4) + flip; "
        f"adversarial training: {victim['adv_steps']}-step PGD of step ρ_a/{victim['adv_alpha_div']:g} from a random "
        f"start within ρ_a = {s['rho_a']}; the victim of seed s trains on the copy protected with seed s; scored on "
        "the clean test set.",
        f"Machine: {cpu['model']} ({record['cpu_count']} CPUs), torch kernels {cpu['torch_capability']} "
        f"({kernels}); load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end (other "
        "work on the machine slows every stage).",
    ])


def build_document(record: dict, folder: Path) -> Document:
    s = record["settings"]
    doc = Document(f"sem-dist demo: {', '.join(NAMES.get(m, m) for m in record['generation'])} on the bundled digits")
    doc.add(Paragraph(
        "Unlearnable examples add an imperceptible, bounded noise to every training image so that a model trained "
        "on the protected copy learns the noise instead of the content and fails on clean images. This run "
        "protected the digits' training set through the same code a Ray cluster runs, then trained victims on the "
        "clean and the protected copies and scored them on the clean test set: **lower accuracy = stronger "
        "protection**."))
    doc.add(Heading("Victim accuracy on the clean test set"), accuracy_table(record))
    n = len(s["seeds"])
    spread = (f"Each cell is the mean ± standard deviation over {n} seeds ({', '.join(map(str, s['seeds']))}); a "
              "seed seeds the generators and the victims of its run. Two cells are called ordered only when their "
              "means differ by more than the sum of their standard deviations." if n > 1 else
              "One seed: no spread is known, so the sentences below compare means alone and may not hold for "
              "another seed or CPU.")
    doc.add(Paragraph(spread + f" {record['data']['test']} test images; the figures move with the seed and with "
                      "the CPU's float kernels (docs/evidence.md)."), Bullets(record["comparisons"]))
    doc.add(Heading("Generation time"), generation_table(record), stage_table(record))
    doc.add(Heading("Samples (Figure 4 layout)"),
            Figure(folder / record["figures"]["samples"],
                   f"{s['per_class']} training images per class: clean, each method's noise scaled for visibility "
                   f"(grey = 0; the gain is in the row title) and the protected image (ℓ∞ ≤ {s['rho_u']})."))
    doc.add(Heading("Learning curves"),
            Figure(folder / record["figures"]["learning_curves"],
                   "Clean test accuracy after every epoch, mean over the seeds: colour = training data, solid = "
                   "standard training, dashed = adversarial training."))
    doc.add(Heading(f"Why ρ_u = {s['rho_u']}"), Paragraph(WHY_RADIUS))
    doc.add(Heading("Settings"), settings_bullets(record))
    doc.add(Paragraph("Every number above is in `report.json` next to this file, with the victims' full records "
                      "(learning curves, configs) and the protected datasets' noise statistics and timings."))
    return doc


def write_report(record: dict, folder: Path) -> tuple[Path, Path, Path]:
    """``report.json``, ``report.md`` and ``report.html`` in ``folder`` (figures already there)."""
    from ..data.storage import open_location

    open_location(str(folder)).write_bytes("report.json", json.dumps(record, indent=2).encode("utf-8"))
    md, html = write_document(build_document(record, folder), folder)
    return folder / "report.json", md, html
