"""What moves the demo's numbers: the generator's seed, the victim's seed, or the CPU's float kernels.

    python -m sem_dist.bench seeds [--generator-seeds 0,1,2] [--victim-seeds 0,1,2] [--kernels native,avx2] --json

At the demo's settings (``demo.DemoSettings``: digits, small CNN, M = 100, J = 1, ρ_u = 16/255), every generator seed
protects the training set once per method and every victim seed trains a standard and an adversarially trained
victim on each protected copy (and on the clean set), all as one-CPU Ray tasks through the demo's own cells
(``demo.protect_cell``, ``demo.victim_cell``), so the grid's diagonal (generator seed = victim seed) is exactly
what ``sem-dist demo`` reports on the same kernels. Each kernel set runs in its own process and embedded Ray:
``native`` is this CPU's kernels, ``avx2`` the kernels an AVX2-only CPU runs (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``; oneDNN convolutions, MKL matmul and ATen's vectorised
math all change results).

Per (training data, training kind) the JSON line holds, in accuracy points:
- ``victim_seed_std``: the std over victim seeds with the generator fixed, averaged over generators and kernels;
- ``generator_seed_std``: the std over generator seeds with the victim seed fixed, averaged likewise;
- ``kernel_shift``: the mean |native − avx2| of one (generator seed, victim seed) run;
- ``demo``: the demo's cell (mean ± std over the diagonal) on each kernel set.
``--quick``: M = 20, 2 victim epochs, seeds 0,1 — a pipeline check, not a measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
KINDS = ("standard", "adversarial")


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def add_arguments(g) -> None:
    g.add_argument("--generator-seeds", default="0,1,2", help="seeds of the generators (default: %(default)s)")
    g.add_argument("--victim-seeds", default="0,1,2", help="seeds of the victims (default: %(default)s)")
    g.add_argument("--kernels", default="native,avx2", help="kernel sets, each in its own process: native, avx2 "
                                                            "(default: %(default)s)")
    g.add_argument("--one-kernel-set", default=None, help=argparse.SUPPRESS)


def grid(settings, generator_seeds, victim_seeds, folder: Path, log) -> dict:
    """In this process's Ray: {data: {kind: {"g{G}v{V}" (or "v{V}" for clean): test accuracy}}}."""
    from ..commands.demo import Generator, protect_cell, victim_cell
    from ..data.convert import convert
    from ..distributed.cells import run_in_order, submit

    data = folder / "data"
    n_train = convert("digits", str(data), shard_rows=settings.shard_rows, overwrite=True)["train"].count
    train_uri, test_uri = str(data / "train"), str(data / "test")
    gens = [Generator(m, s) for s in generator_seeds for m in settings.methods]
    victims = [("clean", None, k, v) for v in victim_seeds for k in KINDS]
    victims += [(m, g, k, v) for g in generator_seeds for m in settings.methods for v in victim_seeds for k in KINDS]
    made: dict = {}

    def start(cell):
        if isinstance(cell, Generator):
            return submit(protect_cell, settings, cell, train_uri, str(folder / f"{cell.method}-g{cell.seed}"))
        d, g, kind, v = cell
        uri = train_uri if d == "clean" else made[Generator(d, g)]["uri"]
        return submit(victim_cell, settings.victim(kind == "adversarial", n_train, v), uri, test_uri)

    def ready(cell, finished) -> bool:
        return isinstance(cell, Generator) or cell[0] == "clean" or Generator(cell[0], cell[1]) in finished

    out: dict = {}
    for cell, rec in run_in_order([*gens, *victims], start, ready):
        if isinstance(cell, Generator):
            made[cell] = rec
            log(f"generator {cell.method} seed {cell.seed}: {rec['wall_s']:.0f} s")
            continue
        d, g, kind, v = cell
        out.setdefault(d, {}).setdefault(kind, {})["v%d" % v if g is None else "g%dv%d" % (g, v)] = rec["test_acc"]
    return out


def _one_kernel_set(settings, generator_seeds, victim_seeds, log) -> dict:
    import ray

    from ..distributed.cluster import connect

    connect(num_cpus=os.cpu_count())
    try:
        with tempfile.TemporaryDirectory(prefix="sem-dist-seeds-") as tmp:
            return grid(settings, generator_seeds, victim_seeds, Path(tmp), log)
    finally:
        ray.shutdown()


def decompose(cells: dict, generator_seeds, victim_seeds) -> dict:
    """The spread of each (data, kind) by source, in accuracy points (see the module docstring)."""
    kernels = list(cells)
    out: dict = {}
    for d in cells[kernels[0]]:
        for kind in KINDS:
            by = {k: cells[k][d][kind] for k in kernels}
            row: dict = {}
            if d == "clean":
                row["victim_seed_std"] = float(np.mean([np.std([by[k][f"v{v}"] for v in victim_seeds], ddof=1)
                                                        for k in kernels]))
                runs = [f"v{v}" for v in victim_seeds]
                diagonal = runs
            else:
                row["victim_seed_std"] = float(np.mean([np.std([by[k][f"g{g}v{v}"] for v in victim_seeds], ddof=1)
                                                        for k in kernels for g in generator_seeds]))
                row["generator_seed_std"] = float(np.mean([np.std([by[k][f"g{g}v{v}"] for g in generator_seeds],
                                                                  ddof=1) for k in kernels for v in victim_seeds]))
                runs = [f"g{g}v{v}" for g in generator_seeds for v in victim_seeds]
                diagonal = [f"g{s}v{s}" for s in generator_seeds if s in victim_seeds]
            if len(kernels) > 1:
                row["kernel_shift"] = float(np.mean([abs(by[kernels[0]][r] - by[kernels[1]][r]) for r in runs]))
            row["demo"] = {k: {"mean": float(np.mean([by[k][r] for r in diagonal])),
                               "std": float(np.std([by[k][r] for r in diagonal], ddof=1)) if len(diagonal) > 1 else 0.0,
                               "per_seed": [by[k][r] for r in diagonal]} for k in kernels}
            out[f"{d}/{kind}"] = {key: (round(100 * v, 2) if isinstance(v, float) else v) for key, v in row.items()}
    return out


def run(quick: bool = False, verbose: bool = True, *, generator_seeds: str = "0,1,2", victim_seeds: str = "0,1,2",
        kernels: str = "native,avx2", one_kernel_set: str | None = None) -> dict:
    from ..commands.demo import DemoSettings
    from ..runtime.device import cpu_summary

    settings = DemoSettings(steps=20, victim_epochs=2) if quick else DemoSettings()
    gs, vs = (_ints("0,1"), _ints("0,1")) if quick else (_ints(generator_seeds), _ints(victim_seeds))
    if len(gs) < 2 or len(vs) < 2:
        raise ValueError("give at least two generator seeds and two victim seeds: a spread needs two runs")

    def log(msg: str) -> None:
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    if one_kernel_set is not None:  # the child process of one kernel set
        return {"kernels": one_kernel_set, "cells": _one_kernel_set(settings, gs, vs, log), "cpu": cpu_summary()}
    t0 = time.perf_counter()
    cells, cpus = {}, {}
    for k in [x.strip() for x in kernels.split(",") if x.strip()]:
        if k not in ("native", "avx2"):
            raise ValueError(f"--kernels: unknown kernel set {k!r} (native, avx2)")
        env = dict(os.environ, SEM_DIST_PROGRESS="0", **(AVX2_KERNELS if k == "avx2" else {}))
        cmd = [sys.executable, "-m", "sem_dist.bench", "seeds", "--json", "--one-kernel-set", k,
               "--generator-seeds", ",".join(map(str, gs)), "--victim-seeds", ",".join(map(str, vs))]
        log(f"kernel set {k}: {len(gs) * len(settings.methods)} generators, "
            f"{2 * len(vs) * (1 + len(gs) * len(settings.methods))} victims")
        done = subprocess.run(cmd + (["--quick"] if quick else []), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"kernel set {k} failed: {done.stderr.strip().splitlines()[-1:]}")
        child = json.loads(done.stdout.strip().splitlines()[-1])
        cells[k], cpus[k] = child["cells"], child["cpu"]
    return {"settings": {**dataclasses.asdict(settings), "generator_seeds": gs, "victim_seeds": vs},
            "spread_points": decompose(cells, gs, vs), "cells": cells, "cpu": cpus,
            "wall_s": round(time.perf_counter() - t0, 1), "quick": quick}
