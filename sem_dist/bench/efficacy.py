"""The paper's efficacy tables at CPU scale (issue #12 §2; how to run and the numbers: docs/efficacy.md).

- ``table2``: clean, EM, TAP, SC, NTGA, REM, SEM × adversarial-training radius ρ_a ∈ {0..4}/255 of the
  victim, ρ_u = 8/255; REM's and SEM's generator ρ_a (and SEM's ρ_r) equal the column's ρ_a (Table 6: the
  paper's best is ρ_r = ρ_a); each method's generation time;
- ``table1``: REM, REM-δu, REM-θ, SEM; ``table7``: the ablation rows (SEM, REM-θ, REM, δ^r without δ^a,
  neither) — generator ρ_a = 4/255, victim ρ_a = 4/255;
- ``table4``: 3×3 mean / median / Gaussian filter on the training images, ρ_u = 16/255, victim ρ_a = 2/255;
- ``table5``: early stopping (10 % held out, part of it clean) on SEM data, victim ρ_a = 4/255;
- ``table11``: protection percentage 20/40/60/80 %, mixed with clean originals or the clean rest only.

Data: scikit-learn's digits (1,437 train / 360 test, 32×32 grey). Settings: the paper's Table 9 (configs/
<method>.yaml) with the project's CPU reductions shared by every method (``evidence.SCALE``: small CNN,
batch 64; for the min-min-max family K_u = 5, J = 2, K_a = 3; victims adversarially trained with 3 PGD steps of
ρ_a/2) and ONE factor ``f`` on every training length: generator steps M (5000·f), TAP's clean-model steps
(15640·f), victim steps (40000·f), early-stopping patience (S_es·f) and the learning-rate decay points.
Default f = 1/50; ``--quick``: f = 1/200, half the training set, Table 2 alone at ρ_a ∈ {0, 2, 4}/255 (other
tables with ``--tables``, on smaller grids). Both run the paper's three seeds (0, 6178, 42): one seed's accuracy
moves by 10-20 points with the seed or the CPU's float kernels at this scale (docs/evidence.md), so every cell is
mean ± std, and the per-seed work is shrunk rather than the seeds dropped.

Every generator and every victim is a Ray task of one CPU (``distributed.cells``), generators first: a
victim task takes its generator's noise by object reference, so a cluster finishes in about the time of
its slowest chain and this machine runs two cells at a time. The last stdout line is one JSON object:
``{"table": {method: {ρ_a in grey levels: mean test accuracy}}, "table_std": {...}, "tables": {...}, ...}``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import method_defaults, parse_fraction
from ..data.sources.digits import load_digits
from ..data.storage import open_location
from ..perturb.algorithm4 import apply_noise
from ..perturb.methods import MinMinMax
from ..victims.evaluate import PAPER_SEEDS, mean_std
from ..victims.train import VictimConfig, train_victim
from .evidence import SCALE, VICTIM, generator_config

CPU = torch.device("cpu")
FULL_FACTOR, QUICK_FACTOR = 1 / 50, 1 / 200
PAPER_VICTIM_STEPS = 40000  # the official victims' schedule (SGD, ×0.1 at 40 % and 80 %)
TABLE2_METHODS = ("clean", "em", "tap", "sc", "ntga", "rem", "sem")
RADII = (0, 1, 2, 3, 4)  # grey levels
TABLES = ("table2", "table1", "table7", "table4", "table5", "table11")
QUICK_TABLES, QUICK_RADII = ("table2",), (0, 2, 4)
TABLE7_ROWS = {"sem": "δu: δr, θ: δa (SEM)", "rem-theta": "θ: δa only (REM-θ)", "rem": "δu: δa, θ: δa (REM)",
               "sem-no-adv": "δu: δr, θ: none", "eot-minmin": "neither"}
# the paper's Table 2, CIFAR-10, ResNet-18, ρ_u = 8/255: test accuracy (%) at ρ_a = 0..4/255
PAPER_TABLE2 = {"clean": (94.66, 93.74, 92.37, 90.90, 89.51), "em": (13.20, 22.08, 71.43, 87.71, 88.62),
                "tap": (22.51, 92.16, 90.53, 89.55, 88.02), "ntga": (16.27, 41.53, 85.13, 89.41, 88.96),
                "sc": (11.63, 91.71, 90.42, 86.84, 87.26), "rem": (15.18, 14.28, 25.41, 30.85, 48.16),
                "sem": (13.0, 12.16, 11.49, 20.91, 31.92)}
CAPTIONS = {
    "table2": "victims adversarially trained at ρ_a; ρ_u = 8/255; REM's and SEM's generator ρ_a = ρ_r = the column's",
    "table1": "column: the victim's ρ_a (/255); generators ρ_u = 8/255, ρ_a = 4/255",
    "table7": "column: the victim's ρ_a (/255); rows: which perturbation trains δu and θ",
    "table4": "3×3 low-pass filter on the training images; ρ_u = 16/255; victim and generator ρ_a = 2/255",
    "table5": "SEM data, victim ρ_a = 4/255; rows: clean share (%) of the 10 % validation split; columns: "
              "patience S_es in the paper's steps (× f when run)",
    "table11": "rows: noise and victim ρ_a (/255); columns: protected share, mixed with the clean rest or the clean "
               "rest alone (clean-only)",
}
PATIENCE = (3000, 5000, 10000, 20000)  # S_es in the paper's steps (Table 5; its "25000" read as 5000)
CLEAN_RATIOS = (0.0, 0.1, 0.3, 0.5, 0.7)
PROTECTED = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class Generator:
    """One noise generation: Algorithm 1 + 4 (or a baseline) on the training set. ``rho_a`` (grey levels)
    is the generator's ρ_a = ρ_r for methods with an adversary, None for the others."""

    method: str
    rho_u: int
    rho_a: int | None
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method} u{self.rho_u}" + ("" if self.rho_a is None else f" a{self.rho_a}") + f" s{self.seed}"


@dataclass(frozen=True)
class Victim:
    """One victim training; ``generator`` None trains on the clean set. Radii in grey levels; ``patience``
    in the paper's steps (scaled by the factor when run)."""

    generator: Generator | None
    rho_a: int
    seed: int
    filter: str = "none"
    patience: int | None = None
    val_clean_ratio: float = 0.0
    poison_ratio: float = 1.0
    poison_mode: str = "mixed"


@dataclass(frozen=True)
class Cell:
    """A place in a table: (table, row, column) ← one victim (one seed)."""

    table: str
    row: str
    column: str
    victim: Victim


def has_adversary(method: str) -> bool:
    """Whether the method's generator has a ρ_a to match (δ^a in θ's update or REM's inner max)."""
    d = method_defaults(method)
    return method in MinMinMax.names and (d.get("trainer", {}).get("model_adv", True)
                                          or d.get("solver", {}).get("inner") != "none")


def generator(method: str, rho_u: int, rho_a: int, seed: int) -> Generator | None:
    if method == "clean":
        return None
    return Generator(method, rho_u, rho_a if has_adversary(method) else None, seed)


def plan(quick: bool, seeds: Sequence[int], methods: Sequence[str] = TABLE2_METHODS,
         radii: Sequence[int] = RADII, tables: Sequence[str] = TABLES) -> list[Cell]:
    """Every cell of the chosen tables; cells that need the same victim share it when run."""
    cells: list[Cell] = []
    for s in seeds:
        def add(table, row, column, method, rho_u=8, gen_rho_a=4, **victim):
            cells.append(Cell(table, row, column, Victim(generator(method, rho_u, gen_rho_a, s), seed=s, **victim)))

        if "table2" in tables:
            for m in methods:
                for r in radii:
                    add("table2", m, str(r), m, gen_rho_a=r, rho_a=r)
        if "table1" in tables:
            for m in ("rem", "rem-delta", "rem-theta", "sem"):
                add("table1", m, "4", m, rho_a=4)
        if "table7" in tables:
            for m, label in TABLE7_ROWS.items():
                add("table7", label, "4", m, rho_a=4)
        if "table4" in tables:
            for m in (("clean", "em", "sem") if quick else ("clean", "em", "tap", "ntga", "rem", "sem")):
                for f in ("mean", "median", "gaussian"):
                    add("table4", m, f, m, rho_u=16, gen_rho_a=2, rho_a=2, filter=f)
        if "table5" in tables:
            for c in ((0.0, 0.5) if quick else CLEAN_RATIOS):
                for p in ((3000, 20000) if quick else PATIENCE):
                    add("table5", f"{round(100 * c)}", str(p), "sem", rho_a=4, patience=p, val_clean_ratio=c)
        if "table11" in tables:
            for r in ((4,) if quick else (2, 4)):
                for p in ((0.2, 0.8) if quick else PROTECTED):
                    for m in (("em", "sem") if quick else ("em", "tap", "ntga", "sc", "rem", "sem")):
                        add("table11", f"{m} a{r}", f"{round(100 * p)}% mixed", m, gen_rho_a=4, rho_a=r,
                            poison_ratio=p)
                    # the clean rest alone does not depend on the method; its noise only marks the clean originals
                    add("table11", f"clean-only a{r}", f"{round(100 * p)}%", "em", rho_a=r, poison_ratio=p,
                        poison_mode="clean-only")
    return cells


def scaled(steps: float, factor: float) -> int:
    return max(1, int(round(steps * factor)))


def generator_settings(g: Generator, factor: float):
    """The ProtectConfig of ``g``: the method's YAML, the shared CPU reductions, training lengths × factor."""
    trainer = method_defaults(g.method).get("trainer", {})
    steps = int(trainer.get("steps", 0))
    extra = {"trainer.lr_step": scaled(trainer.get("lr_step", 2000), factor)}
    rho_a = 4 if g.rho_a is None else g.rho_a
    return generator_config(g.method, scaled(steps, factor) if steps else 0, g.rho_u / 255, rho_a / 255,
                            rho_a / 255, seed=g.seed, extra=extra)


def victim_settings(v: Victim, factor: float) -> VictimConfig:
    return dataclasses.replace(VICTIM, steps=scaled(PAPER_VICTIM_STEPS, factor), seed=v.seed, adv_rho=v.rho_a / 255,
                               filter=v.filter, patience=None if v.patience is None else scaled(v.patience, factor),
                               val_clean_ratio=v.val_clean_ratio, poison_ratio=v.poison_ratio,
                               poison_mode=v.poison_mode)


def training_set(train_size: int | None):
    train = load_digits("train")
    return train if train_size is None else train.subset(range(min(train_size, len(train))))


def generate(g: Generator, factor: float, train_size: int | None) -> dict:
    """A generator cell: the int8 noise of every training sample and how long it took."""
    from ..perturb.algorithm4 import noise_stats
    from ..perturb.in_memory import protect_arrays

    cfg = generator_settings(g, factor)
    protected, timing = protect_arrays(cfg, training_set(train_size), CPU)
    return {"noise": protected.noise, "generation_s": sum(timing.values()), "timing": timing,
            "noise_stats": noise_stats(protected.noise), "M": cfg.trainer.steps}


def victim(v: Victim, factor: float, train_size: int | None, made: dict | None) -> dict:
    """A victim cell: clean test accuracy of a victim trained on the clean or the protected set."""
    train = training_set(train_size)
    if made is not None:
        train = train.with_images(apply_noise(train.images, made["noise"]), made["noise"])
    elif v.poison_ratio < 1.0:
        raise ValueError("partial poisoning needs a generator's noise")
    r = train_victim(victim_settings(v, factor), train, load_digits("test"), CPU)
    return {"test_acc": r.test_acc, "train_acc": r.train_acc, "steps": r.steps, "wall_s": r.wall_s}


def run_cells(cells: Sequence[Cell], factor: float, train_size: int | None, log=lambda msg: None,
              on_result=lambda results, generation: None) -> tuple[dict, dict]:
    """Run every distinct generator and victim as Ray tasks, table by table (a table's new generators, then
    its victims; a victim starts once its generator is done and reads the noise by reference), so early
    tables finish first; returns ({Victim: result}, {Generator: generation record}).
    ``on_result`` sees the results so far after every finished cell."""
    from ..distributed.cells import run_in_order, submit
    from ..runtime.progress import bar

    order: list = []
    for table in dict.fromkeys(c.table for c in cells):
        mine = list(dict.fromkeys(c.victim for c in cells if c.table == table))
        order += [g for g in dict.fromkeys(v.generator for v in mine if v.generator is not None) if g not in order]
        order += [v for v in mine if v not in order]
    gen_refs: dict = {}

    def start(cell):
        if isinstance(cell, Generator):
            gen_refs[cell] = submit(generate, cell, factor, train_size)
            return gen_refs[cell]
        return submit(victim, cell, factor, train_size, None if cell.generator is None else gen_refs[cell.generator])

    def ready(cell, finished: set) -> bool:
        return isinstance(cell, Generator) or cell.generator is None or cell.generator in finished

    results, generation = {}, {}
    n_gen = sum(isinstance(c, Generator) for c in order)
    with bar(len(order), f"cells ({n_gen} generators, {len(order) - n_gen} victims)", unit="cell") as pb:
        for cell, res in run_in_order(order, start, ready):
            if isinstance(cell, Generator):
                generation[cell] = {k: res[k] for k in ("generation_s", "timing", "noise_stats", "M")}
                log(f"generator {cell.name}: {res['generation_s']:.0f}s, M = {res['M']}")
            else:
                results[cell] = res
                log(f"victim {cell.generator.name if cell.generator else 'clean'} AT {cell.rho_a}/255 {cell.filter} "
                    f"p={cell.poison_ratio} {cell.poison_mode} es={cell.patience}/{cell.val_clean_ratio}: "
                    f"{100 * res['test_acc']:.1f}%")
            on_result(results, generation)
            pb.update(1)
    return results, generation


def assemble(cells: Sequence[Cell], accuracy: dict) -> dict:
    """{table: {row: {column: {mean, std, n, per_seed}}}} from per-victim test accuracies (std: ddof = 1);
    cells whose victim has no accuracy yet are left out."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for c in cells:
        if c.victim not in accuracy:  # not finished (a partial table while the run goes on)
            continue
        grouped[c.table][c.row][c.column].append((c.victim.seed, accuracy[c.victim]))
    out: dict = {}
    for table, rows in grouped.items():
        out[table] = {}
        for row, columns in rows.items():
            out[table][row] = {}
            for column, values in columns.items():
                m, s = mean_std([a for _, a in values])
                out[table][row][column] = {"mean": m, "std": s, "n": len(values),
                                           "per_seed": {str(seed): a for seed, a in values}}
    return out


def means(assembled: dict, key: str = "mean") -> dict:
    """The same tables with only the mean (or ``key="std"``) of each cell (the JSON line's ``table`` / ``tables``)."""
    return {t: {r: {c: round(v[key], 4) for c, v in cols.items()} for r, cols in rows.items()}
            for t, rows in assembled.items()}


def generation_times(generation: dict, table2_methods: Sequence[str]) -> dict:
    """Mean generation time (s) of each method's generators at ρ_u = 8/255 (Table 2's)."""
    times = defaultdict(list)
    for g, rec in generation.items():
        if g.rho_u == 8 and g.method in table2_methods:
            times[g.method].append(rec["generation_s"])
    return {m: round(float(np.mean(t)), 1) for m, t in times.items()}


def markdown(assembled: dict, gen_s: dict, settings: dict) -> str:
    """Every table as Markdown, cells "mean ± std" in % (std over seeds, ddof = 1; "± 0.0" for one seed)."""
    lines = [f"# Efficacy at CPU scale ({settings['data']}, factor f = {settings['factor']:.4g}, "
             f"seeds {settings['seeds']})", ""]
    for table, rows in assembled.items():
        columns = list(dict.fromkeys(c for cols in rows.values() for c in cols))
        extra = ["gen. time (s)"] if table == "table2" else []
        label = "ρ_a = " if table == "table2" else ""
        lines += [f"## {table}", "", CAPTIONS[table] + ".", "", "| row | " + " | ".join(label + c + ("/255" if label else "") for c in columns)
                  + "".join(f" | {e}" for e in extra) + " |", "|---" * (len(columns) + 1 + len(extra)) + "|"]
        for row, cols in rows.items():
            cells = [f"{100 * cols[c]['mean']:.1f} ± {100 * cols[c]['std']:.1f}" if c in cols else "–" for c in columns]
            if extra:
                cells.append(f"{gen_s[row]:.0f}" if row in gen_s else "–")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if "table2" in assembled:
        rows = assembled["table2"]
        columns = list(dict.fromkeys(c for cols in rows.values() for c in cols))
        lines += ["## table2 beside the paper (ours / paper's CIFAR-10 ResNet-18, %)", "",
                  "| method | " + " | ".join(f"ρ_a = {c}/255" for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row, cols in rows.items():
            lines.append(f"| {row} | " + " | ".join(
                (f"{100 * cols[c]['mean']:.1f}" if c in cols else "–")
                + (f" / {PAPER_TABLE2[row][int(c)]:.1f}" if row in PAPER_TABLE2 and int(c) < 5 else "")
                for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_table2(assembled: dict, path: Path) -> None:
    """Figure: mean test accuracy (± std) against the victim's ρ_a, one line per method."""
    from ..analysis.figures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, cols in assembled.get("table2", {}).items():
        xs = sorted(cols, key=int)
        ax.errorbar([int(x) for x in xs], [100 * cols[x]["mean"] for x in xs], yerr=[100 * cols[x]["std"] for x in xs],
                    marker="o", capsize=3, label=method)
    ax.set_xlabel("victim's adversarial-training radius ρ_a (/255)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Table 2 at CPU scale (ρ_u = 8/255; lower = better protection)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(g) -> None:
    g.add_argument("--out", default="efficacy-results", help="output folder for efficacy.md/.json/table2.png "
                                                             "(default: %(default)s)")
    g.add_argument("--seeds", default=None, help="comma-separated victim and generator seeds; each cell is mean ± std "
                                                 "over them (default: 0,6178,42)")
    g.add_argument("--factor", default=None, help="the one scale factor f on every training length, e.g. 1/50 "
                                                  "(default: 1/50; --quick: 1/200)")
    g.add_argument("--address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    g.add_argument("--tables", default=None, help=f"comma-separated subset of the tables; they run in the default's "
                                                  f"order (default: {','.join(TABLES)}; --quick: table2 at ρ_a 0, 2, 4)")


def run(quick: bool = False, verbose: bool = True, *, out: str = "efficacy-results", seeds: str | None = None,
        factor: str | float | None = None, address: str | None = None, methods: Sequence[str] = TABLE2_METHODS,
        radii: Sequence[int] | None = None, tables: Sequence[str] | str | None = None,
        train_size: int | None = None) -> dict:
    """The tables; keyword arguments shrink the grid (tests use a tiny one)."""
    from ..distributed.cluster import connect

    t0 = time.perf_counter()
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] if isinstance(seeds, str) else list(
            seeds or PAPER_SEEDS)
    except ValueError:
        raise ValueError(f"--seeds {seeds!r}: give comma-separated integers, e.g. 0,6178,42") from None
    if not seed_list:
        raise ValueError("--seeds: give at least one seed")
    f = parse_fraction(factor) if factor is not None else (QUICK_FACTOR if quick else FULL_FACTOR)
    if not 0 < f <= 1:
        raise ValueError(f"--factor {factor}: the scale factor must be in (0, 1]")
    if tables is None:
        tables = QUICK_TABLES if quick else TABLES
    tables = [t.strip() for t in tables.split(",") if t.strip()] if isinstance(tables, str) else list(tables)
    if radii is None:
        radii = QUICK_RADII if quick else RADII
    if train_size is None and quick:
        train_size = 720
    unknown = sorted(set(methods) - set(TABLE2_METHODS)) + sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown method or table {unknown[0]!r}")
    cells = plan(quick, seed_list, methods, radii, tables)

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    connect(address, num_cpus=None if address else os.cpu_count())
    n_train = len(training_set(train_size))
    settings = {"data": f"digits {n_train} train / 360 test, 32x32x1", "factor": f, "seeds": seed_list,
                "generator_M": scaled(5000, f), "victim_steps": scaled(PAPER_VICTIM_STEPS, f),
                "cpu_reductions": SCALE, "victim": dataclasses.asdict(dataclasses.replace(
                    VICTIM, steps=scaled(PAPER_VICTIM_STEPS, f)))}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    location = open_location(str(folder))

    def write(results: dict, generation: dict, complete: bool = False) -> dict:
        """efficacy.md / .json from the cells finished so far (a stopped run keeps its partial tables)."""
        assembled = assemble(cells, {v: r["test_acc"] for v, r in results.items()})
        gen_s = generation_times(generation, methods)
        record = {"bench": "efficacy", "quick": quick, "complete": complete, "settings": settings,
                  "tables": assembled, "generation_s": gen_s,
                  "generators": [dict(dataclasses.asdict(g), **rec) for g, rec in generation.items()],
                  "victims": [dict(dataclasses.asdict(v), **r) for v, r in results.items()],
                  "platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                  "wall_s": round(time.perf_counter() - t0, 1)}
        location.write_bytes("efficacy.json", json.dumps(record, indent=1, default=str).encode())
        heading = "" if complete else f"**Partial: {len(results)} of {len({c.victim for c in cells})} victims done.**\n\n"
        location.write_bytes("efficacy.md", (heading + markdown(assembled, gen_s, settings)).encode())
        return record

    results, generation = run_cells(cells, f, train_size, log, on_result=write)
    record = write(results, generation, complete=True)
    plot_table2(record["tables"], folder / "table2.png")
    tables_mean = means(record["tables"])
    return {"table": tables_mean.get("table2", {}), "table_std": means(record["tables"], "std").get("table2", {}),
            "tables": tables_mean, "generation_s": record["generation_s"],
            "settings": {k: settings[k] for k in ("data", "factor", "seeds", "generator_M", "victim_steps")},
            "out": str(folder), "quick": quick, "wall_s": record["wall_s"], "load_avg_1m_at_end": record["load_avg_1m"]}
